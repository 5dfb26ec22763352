package main

import (
	"encoding/json"
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// facts describe the machine and software a run measured.
type facts struct {
	When, CPU, Go, Python, Executable string
	Cores                             int
}

func machineFacts(version, exe string) facts {
	f := facts{When: time.Now().UTC().Format(time.RFC3339), Go: runtime.Version(), Python: version, Executable: exe, Cores: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				f.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return f
}

func (f facts) String() string {
	return fmt.Sprintf("%s · %d cores · %s · CPython %s · %s\n\n", f.CPU, f.Cores, f.Go, f.Python, f.When)
}

// selfRSS is this process's resident memory.
func selfRSS() int64 { return statusRSS("/proc/self/status") }

func statusRSS(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// childrenRSS sums the resident memory of this process's descendants.
func childrenRSS() int64 {
	var total int64
	stack := []string{strconv.Itoa(os.Getpid())}
	first := true
	for len(stack) > 0 {
		pid := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if !first {
			total += statusRSS("/proc/" + pid + "/status")
		}
		first = false
		tasks, _ := filepath.Glob("/proc/" + pid + "/task/*/children")
		for _, t := range tasks {
			b, _ := os.ReadFile(t)
			stack = append(stack, strings.Fields(string(b))...)
		}
	}
	return total
}

func dur(ns int64) string {
	if ns == 0 {
		return "—"
	}
	d := time.Duration(ns)
	switch {
	case d < time.Microsecond:
		return fmt.Sprintf("%d ns", ns)
	case d < time.Millisecond:
		return fmt.Sprintf("%.1f µs", float64(ns)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(ns)/1e6)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func num(v float64) string {
	switch {
	case v == 0:
		return "—"
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.1f", v)
}

func row(r Result) []string {
	spread := ""
	if r.OpsSpread > 0 {
		spread = fmt.Sprintf("±%.0f%%", 50*r.OpsSpread)
	}
	speed := ""
	if r.Speedup > 0 {
		speed = fmt.Sprintf("%.2f×", r.Speedup)
	}
	mb := ""
	if r.MBPerS > 0 {
		mb = fmt.Sprintf("%.0f MB/s", r.MBPerS)
	}
	rss := ""
	if r.RSSBytes > 0 {
		rss = fmt.Sprintf("%.1f MiB", float64(r.RSSBytes)/(1<<20))
	}
	return []string{r.Scenario, r.Profile, strconv.Itoa(r.Workers), strconv.Itoa(r.Concurrency), r.Param,
		num(r.OpsPerS) + " " + spread, dur(r.P50), dur(r.P99), dur(r.P999), speed, mb, dur(r.StartupNS), rss}
}

var header = []string{"scenario", "profile", "workers", "callers", "param", "ops/s", "p50", "p99", "p99.9", "speedup", "payload", "start-up", "RSS/worker"}

func table(rs []Result) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(header, "\t"))
	for _, r := range rs {
		fmt.Fprintln(w, strings.Join(row(r), "\t"))
	}
	w.Flush()
	return b.String()
}

func markdown(f facts, rs []Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# snakepit benchmark\n\n%s", f.String())
	fmt.Fprintf(&b, "| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat("---|", len(header)))
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s |\n", strings.Join(row(r), " | "))
	}
	b.WriteString("\n![latency](latency.svg) ![throughput](throughput.svg) ![cpu](cpu.svg)\n")
	return b.String()
}

func writeReport(dir string, f facts, rs []Result) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(markdown(f, rs)), 0o644); err != nil {
		return err
	}
	j, _ := json.MarshalIndent(struct {
		Facts   facts    `json:"machine"`
		Results []Result `json:"results"`
	}{f, rs}, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "results.json"), j, 0o644); err != nil {
		return err
	}
	charts := map[string]string{
		"latency.svg":    latencyChart(rs),
		"throughput.svg": lineChart("Throughput vs concurrency (no-op calls/s)", "callers", rs, "throughput", func(r Result) (float64, float64) { return float64(r.Concurrency), r.OpsPerS }),
		"cpu.svg":        lineChart("CPU-bound scaling (speedup over one worker)", "workers busy", rs, "cpu", func(r Result) (float64, float64) { return float64(r.Workers), r.Speedup }),
	}
	for name, svg := range charts {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(svg), 0o644); err != nil {
			return err
		}
	}
	return nil
}

const chartW, chartH, pad = 720.0, 360.0, 60.0

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"}

// latencyChart draws p50 and p99 of the no-op latency per profile as bars
// on a log scale.
func latencyChart(rs []Result) string {
	var lat []Result
	for _, r := range rs {
		if r.Scenario == "latency" && r.P50 > 0 {
			lat = append(lat, r)
		}
	}
	var b strings.Builder
	svgOpen(&b, "No-op call latency, one caller (p50 solid, p99 light; log scale)")
	if len(lat) == 0 {
		return svgClose(&b)
	}
	lo, hi := math.Log10(100), math.Log10(1e9) // 100 ns .. 1 s
	y := func(ns int64) float64 {
		v := (math.Log10(float64(max(ns, 100))) - lo) / (hi - lo)
		return chartH - pad - v*(chartH-2*pad)
	}
	for _, tick := range []int64{1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9} {
		fmt.Fprintf(&b, `<line x1="%g" x2="%g" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%g" y="%.1f" font-size="10" text-anchor="end">%s</text>`,
			pad, chartW-pad/2, y(tick), y(tick), pad-4, y(tick)+3, html.EscapeString(dur(tick)))
	}
	bw := (chartW - 1.5*pad) / float64(len(lat))
	for i, r := range lat {
		x := pad + float64(i)*bw + bw*0.15
		c := palette[i%len(palette)]
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" opacity="0.35"/>`, x, y(r.P99), bw*0.7, chartH-pad-y(r.P99), c)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`, x, y(r.P50), bw*0.7, chartH-pad-y(r.P50), c)
		fmt.Fprintf(&b, `<text x="%.1f" y="%g" font-size="10" text-anchor="middle">%s</text>`, x+bw*0.35, chartH-pad+14, html.EscapeString(r.Profile))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="10" text-anchor="middle">%s</text>`, x+bw*0.35, y(r.P50)-4, html.EscapeString(dur(r.P50)))
	}
	return svgClose(&b)
}

// lineChart draws one line per profile of the scenario's points.
func lineChart(title, xlabel string, rs []Result, scenario string, xy func(Result) (float64, float64)) string {
	series := map[string][][2]float64{}
	var names []string
	maxX, maxY := 1.0, 0.0
	for _, r := range rs {
		if r.Scenario != scenario {
			continue
		}
		x, yv := xy(r)
		if _, ok := series[r.Profile]; !ok {
			names = append(names, r.Profile)
		}
		series[r.Profile] = append(series[r.Profile], [2]float64{x, yv})
		maxX, maxY = math.Max(maxX, x), math.Max(maxY, yv)
	}
	var b strings.Builder
	svgOpen(&b, title)
	if maxY == 0 {
		return svgClose(&b)
	}
	maxY *= 1.1
	logX := maxX > 16
	xf := func(x float64) float64 {
		v := x / maxX
		if logX {
			v = math.Log2(x) / math.Log2(maxX)
		}
		return pad + v*(chartW-1.5*pad)
	}
	yf := func(v float64) float64 { return chartH - pad - v/maxY*(chartH-2*pad) }
	for i := 0; i <= 4; i++ {
		v := maxY * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%g" x2="%g" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%g" y="%.1f" font-size="10" text-anchor="end">%s</text>`,
			pad, chartW-pad/2, yf(v), yf(v), pad-4, yf(v)+3, num(v))
	}
	fmt.Fprintf(&b, `<text x="%g" y="%g" font-size="11" text-anchor="middle">%s</text>`, chartW/2, chartH-pad/3, html.EscapeString(xlabel))
	slices.Sort(names)
	for i, name := range names {
		pts := series[name]
		slices.SortFunc(pts, func(a, b [2]float64) int { return int(a[0] - b[0]) })
		var path []string
		for _, p := range pts {
			path = append(path, fmt.Sprintf("%.1f,%.1f", xf(p[0]), yf(p[1])))
			fmt.Fprintf(&b, `<text x="%.1f" y="%g" font-size="9" text-anchor="middle" fill="#666">%g</text>`, xf(p[0]), chartH-pad+12, p[0])
		}
		c := palette[i%len(palette)]
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, c, strings.Join(path, " "))
		fmt.Fprintf(&b, `<rect x="%g" y="%g" width="10" height="10" fill="%s"/><text x="%g" y="%g" font-size="11">%s</text>`,
			chartW-pad*2.6, pad/2+float64(i)*14, c, chartW-pad*2.6+14, pad/2+float64(i)*14+9, html.EscapeString(name))
	}
	return svgClose(&b)
}

func svgOpen(b *strings.Builder, title string) {
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" font-family="sans-serif">`, chartW, chartH)
	fmt.Fprintf(b, `<rect width="100%%" height="100%%" fill="white"/><text x="%g" y="20" font-size="14" text-anchor="middle">%s</text>`, chartW/2, html.EscapeString(title))
}

func svgClose(b *strings.Builder) string {
	b.WriteString("</svg>\n")
	return b.String()
}
