package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRun runs a short sweep of two scenarios with real Python and checks
// the report it writes.
func TestRun(t *testing.T) {
	out := t.TempDir()
	o := options{
		scenarios: []string{"latency", "cpu"}, profiles: []string{"thread", "process", "baselines"},
		workers: 2, duration: 50 * time.Millisecond, reps: 1, quick: true, format: "table", out: out,
	}
	if err := run(o); err != nil {
		t.Fatal(err)
	}
	var report struct {
		Results []Result `json:"results"`
	}
	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &report); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range report.Results {
		seen[r.Scenario+"/"+r.Profile] = true
		if r.Scenario == "latency" && (r.P50 <= 0 || r.OpsPerS <= 0) {
			t.Fatalf("latency row without figures: %+v", r)
		}
	}
	for _, want := range []string{"latency/thread", "latency/process", "latency/jsonl-child", "latency/exec-per-call",
		"latency/interpreter-pool-executor", "latency/process-pool-executor", "cpu/thread", "cpu/process"} {
		if !seen[want] {
			t.Errorf("no %s result", want)
		}
	}
	md, _ := os.ReadFile(filepath.Join(out, "results.md"))
	if !strings.Contains(string(md), "| latency | thread |") {
		t.Fatalf("results.md lacks the latency rows:\n%s", md)
	}
	for _, svg := range []string{"latency.svg", "throughput.svg", "cpu.svg"} {
		b, err := os.ReadFile(filepath.Join(out, svg))
		if err != nil || !strings.HasPrefix(string(b), "<svg") || !strings.HasSuffix(strings.TrimSpace(string(b)), "</svg>") {
			t.Fatalf("%s: %v", svg, err)
		}
	}
}

func TestMedian(t *testing.T) {
	r := median([]Result{{OpsPerS: 10}, {OpsPerS: 30}, {OpsPerS: 20}})
	if r.OpsPerS != 20 || r.OpsSpread != 1 {
		t.Fatalf("got %+v, want the median 20 with spread (30-10)/20", r)
	}
}
