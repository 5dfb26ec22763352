package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/snakepit-go/snakepit/python"
	"github.com/snakepit-go/snakepit/python/locate"
	"github.com/snakepit-go/snakepit/subproc"
)

// usePython makes exe the Python of this command, for both profiles: it is
// what SNAKEPIT_PYTHON means to the library (the thread profile loads that
// interpreter's libpython), so the environment is set accordingly and the
// variables that would take precedence are cleared.
func usePython(exe string) {
	if exe == "" {
		return
	}
	os.Setenv(locate.EnvPython, exe)
	os.Unsetenv(locate.EnvLibPython)
	os.Unsetenv(locate.EnvPythonHome)
}

// processPython returns the interpreter a process-profile worker runs when
// its Config.Python is empty (subproc.Interpreter).
func processPython() (string, error) { return subproc.Interpreter("") }

// commandInfo describes one command of an adapter (snakepit._describe).
type commandInfo struct {
	Name        string `json:"name"`
	Signature   string `json:"signature"`
	Description string `json:"description"`
	Doc         string `json:"doc"`
	Stream      bool   `json:"stream"`
	Async       bool   `json:"async"`
	Ctx         bool   `json:"ctx"`
	ThreadSafe  bool   `json:"thread_safe"`
}

// description is what snakepit._describe.describe returns.
type description struct {
	Module   string        `json:"module"`
	Commands []commandInfo `json:"commands"`
}

// describeInChild imports module in a child process of exe and returns its
// commands.
func describeInChild(ctx context.Context, exe, module string, paths []string) (description, error) {
	pkg, err := python.Path()
	if err != nil {
		return description{}, err
	}
	cmd := exec.CommandContext(ctx, exe, "-m", "snakepit._describe", module)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+strings.Join(append([]string{pkg}, paths...), string(filepath.ListSeparator)))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return description{}, fmt.Errorf("describe %s with %s: %w: %s", module, exe, err, lastLines(stderr.String(), 20))
	}
	var d description
	if err := json.Unmarshal(out, &d); err != nil {
		return description{}, fmt.Errorf("describe %s with %s: unexpected output %q: %w", module, exe, out, err)
	}
	return d, nil
}

// describeValue converts what snakepit._describe.describe returned in a
// sub-interpreter (decoded Python values) into a description.
func describeValue(v any) (description, error) {
	b, err := json.Marshal(jsonValue(v))
	if err != nil {
		return description{}, err
	}
	var d description
	err = json.Unmarshal(b, &d)
	return d, err
}

// lastLines returns the last n lines of s, trimmed.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logger returns the command's logger: the adapters' log records and the
// pool's events on stderr with -v, nothing else.
func logger(verbose bool, stderr io.Writer) *slog.Logger {
	if !verbose {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// absPaths returns the -path directories made absolute (workers may run
// in another directory), the current directory when there are none.
func absPaths(dirs []string) ([]string, error) {
	if len(dirs) == 0 {
		dirs = []string{"."}
	}
	out := make([]string, 0, len(dirs))
	for _, d := range dirs {
		abs, err := filepath.Abs(d)
		if err != nil {
			return nil, err
		}
		out = append(out, abs)
	}
	return out, nil
}
