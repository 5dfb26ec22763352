package main

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRun runs a short sweep of two scenarios with real Python and checks
// the report it writes.
func TestRun(t *testing.T) {
	out := t.TempDir()
	o := options{
		scenarios: []string{"latency", "cpu"}, profiles: []string{"thread", "process", "baselines"},
		workers: 2, duration: 50 * time.Millisecond, reps: 1, quick: true, format: "table", out: out,
	}
	require.NoError(t, run(o))
	var report struct {
		Results []Result `json:"results"`
	}
	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &report))
	seen := map[string]bool{}
	for _, r := range report.Results {
		seen[r.Scenario+"/"+r.Profile] = true
		if r.Scenario == "latency" {
			assert.True(t, r.P50 > 0 && r.OpsPerS > 0, "latency row without figures: %+v", r)
		}
	}
	for _, want := range []string{"latency/thread", "latency/process", "latency/jsonl-child", "latency/exec-per-call",
		"latency/interpreter-pool-executor", "latency/process-pool-executor", "cpu/thread", "cpu/process"} {
		assert.True(t, seen[want], "no %s result", want)
	}
	md, err := os.ReadFile(filepath.Join(out, "results.md"))
	require.NoError(t, err)
	assert.Contains(t, string(md), "| latency | thread |")
	for _, svg := range []string{"latency.svg", "throughput.svg", "cpu.svg"} {
		b, err := os.ReadFile(filepath.Join(out, svg))
		require.NoError(t, err, svg)
		assert.True(t, strings.HasPrefix(string(b), "<svg"), "%s: got %.40q, want an SVG", svg, b)
		assert.True(t, strings.HasSuffix(strings.TrimSpace(string(b)), "</svg>"), "%s: not closed", svg)
	}
}

// TestOutputOnlyWhenAsked: without -out (a plain or -quick run) nothing is
// written, so the committed bench/results/ stays as it is; -out names the
// directory. The default was bench/results.
func TestOutputOnlyWhenAsked(t *testing.T) {
	for _, args := range [][]string{nil, {"-quick"}, {"-quick", "-format", "json"}} {
		o, err := parseFlags(args)
		require.NoError(t, err, "%q", args)
		assert.Empty(t, o.out, "%q: output directory", args)
	}
	o, err := parseFlags([]string{"-quick", "-out", "/tmp/somewhere"})
	require.NoError(t, err)
	assert.Equal(t, "/tmp/somewhere", o.out)
	assert.True(t, o.quick)
	assert.Equal(t, 1, o.reps)
}

// TestRunWithoutOut: a run without an output directory writes no file.
func TestRunWithoutOut(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	o, err := parseFlags([]string{"-quick", "-scenarios", "latency", "-profiles", "thread", "-duration", "20ms", "-workers", "1"})
	require.NoError(t, err)
	require.NoError(t, run(o))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, entries, "files written to the working directory")
}

func TestParseFlagsErrors(t *testing.T) {
	_, err := parseFlags([]string{"-format", "xml"})
	assert.ErrorContains(t, err, "-format must be table or json")
	_, err = parseFlags([]string{"stray"})
	assert.ErrorContains(t, err, "unexpected arguments")
	_, err = parseFlags([]string{"-help"})
	assert.ErrorIs(t, err, flag.ErrHelp)
}

func TestMedian(t *testing.T) {
	r := median([]Result{{OpsPerS: 10}, {OpsPerS: 30}, {OpsPerS: 20}})
	assert.Equal(t, 20.0, r.OpsPerS, "the median")
	assert.Equal(t, 1.0, r.OpsSpread, "spread (30-10)/20")
}
