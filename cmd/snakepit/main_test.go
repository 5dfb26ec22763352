package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/snakepit-go/snakepit/internal/pymatrix"
	"github.com/snakepit-go/snakepit/python/dist"
	"github.com/snakepit-go/snakepit/python/locate"
)

// binary is the snakepit command, built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "snakepit-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "snakepit")
	gocmd := filepath.Join(runtime.GOROOT(), "bin", "go")
	args := []string{"build", "-o", binary}
	if raceBuild {
		args = append(args, "-race")
	}
	build := exec.Command(gocmd, append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build snakepit:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// snakepit runs the command with args in testdata, with the environment
// less the Python choices plus env ("KEY=value"), bounded by two minutes.
func snakepit(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = "testdata"
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, locate.EnvPython+"=") || strings.HasPrefix(kv, locate.EnvLibPython+"=") ||
			strings.HasPrefix(kv, locate.EnvPythonHome+"=") {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		require.NoError(t, err, "run snakepit %q", args)
	}
	require.NoError(t, ctx.Err(), "snakepit %q did not finish: stdout %s stderr %s", args, r.stdout, r.stderr)
	return r
}

func TestHelp(t *testing.T) {
	flags := map[string][]string{
		"doctor": {"-json", "-verify", "-timeout", "-v"},
		"check":  {"-path", "-python", "-timeout", "-json", "-v"},
		"call":   {"-profile", "-python", "-path", "-timeout", "-session", "-v"},
		"bench":  nil,
		"serve":  {"-nats", "-name", "-profile", "-python", "-path", "-size", "-concurrency", "-grace", "-creds", "-nkey", "-tls-ca", "-tls-cert", "-tls-key", "-v"},
	}
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		r := snakepit(t, nil, args...)
		assert.Equal(t, 0, r.code, "snakepit %q: exit status", args)
		for name := range flags {
			assert.Contains(t, r.stdout, "  "+name+" ", "snakepit %q lists the commands", args)
		}
	}
	for name, want := range flags {
		for _, args := range [][]string{{"help", name}, {name, "-h"}, {name, "--help"}} {
			r := snakepit(t, nil, args...)
			assert.Equal(t, 0, r.code, "snakepit %q: exit status", args)
			assert.Contains(t, r.stdout, "usage: snakepit "+name, "snakepit %q", args)
			for _, f := range want {
				assert.Regexp(t, `(?m)^  `+regexp.QuoteMeta(f)+`( [A-Za-z]+)?\s+\S`, r.stdout, "snakepit %q explains %s", args, f)
			}
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "usage: snakepit COMMAND"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"help", "frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"call", "-nope", "greeter", "greet"}, "flag provided but not defined: -nope"},
		{[]string{"call", "greeter"}, "want MODULE COMMAND [JSON]"},
		{[]string{"call", "-profile", "fibre", "greeter", "greet"}, "-profile must be thread, process or auto"},
		{[]string{"call", "greeter", "greet", `{"name": `}, "not valid JSON"},
		{[]string{"call", "greeter", "greet", `{"name": "a"} x`}, "not valid JSON"},
		{[]string{"call", "greeter", "greet", `["a"]`}, "want a JSON object"},
		{[]string{"check"}, "want one MODULE"},
		{[]string{"doctor", "extra"}, "takes no arguments"},
	} {
		r := snakepit(t, nil, tc.args...)
		assert.Equal(t, 2, r.code, "snakepit %q: exit status (stderr %s)", tc.args, r.stderr)
		assert.Contains(t, r.stderr, tc.want, "snakepit %q: stderr", tc.args)
		assert.Empty(t, r.stdout, "snakepit %q: stdout", tc.args)
	}
}

func TestDoctor(t *testing.T) {
	r := snakepit(t, nil, "doctor")
	require.Equal(t, 0, r.code, "exit status; stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	assert.Regexp(t, `(?m)^ok +hermetic python +CPython 3\.14`, r.stdout)
	assert.Regexp(t, `(?m)^ok +thread profile +.*libpython3\.14.*own GIL`, r.stdout)
	assert.Regexp(t, `(?m)^ok +process profile +.*python3\.14.*worker process started`, r.stdout)
	assert.Regexp(t, `(?m)^(ok|warn) +process registry `, r.stdout)
	assert.NotContains(t, r.stdout, "FAIL")

	r = snakepit(t, nil, "doctor", "-json")
	require.Equal(t, 0, r.code, "exit status; stderr:\n%s", r.stderr)
	var rep doctorReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), "doctor -json output %s", r.stdout)
	assert.True(t, rep.OK, "ok")
	byName := map[string]doctorCheck{}
	for _, c := range rep.Checks {
		byName[c.Name] = c
	}
	assert.Equal(t, statusOK, byName["thread profile"].Status, "thread profile: %+v", byName["thread profile"])
	assert.Equal(t, "3.14.6", byName["thread profile"].Version)
	assert.Equal(t, statusOK, byName["process profile"].Status, "process profile: %+v", byName["process profile"])
}

func TestDoctorPython311(t *testing.T) {
	py := pymatrix.Python311(t)
	r := snakepit(t, []string{locate.EnvPython + "=" + py.Executable}, "doctor")
	require.Equal(t, 0, r.code, "exit status; stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	assert.Regexp(t, `(?m)^ok +environment +SNAKEPIT_PYTHON=.*CPython 3\.11`, r.stdout)
	assert.Regexp(t, `(?m)^warn +thread profile +.*libpython3\.11.*share one GIL`, r.stdout)
	assert.Regexp(t, `(?m)^ok +process profile +.*python3\.11`, r.stdout)
}

func TestDoctorBrokenEnvironment(t *testing.T) {
	r := snakepit(t, []string{locate.EnvPython + "=/nonexistent/python3"}, "doctor")
	assert.Equal(t, 1, r.code, "exit status; stdout:\n%s", r.stdout)
	assert.Regexp(t, `(?m)^FAIL +environment +SNAKEPIT_PYTHON=/nonexistent/python3: does not work: .*no such file`, r.stdout)
	assert.Regexp(t, `(?m)^FAIL +process profile `, r.stdout)
	assert.Regexp(t, `(?m)^FAIL +setup +no usable Python`, r.stdout)
}

func TestCheckThreadSafeAdapter(t *testing.T) {
	r := snakepit(t, nil, "check", "greeter")
	require.Equal(t, 0, r.code, "exit status; stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	assert.Regexp(t, `(?m)^ok +thread +runs it`, r.stdout)
	assert.Regexp(t, `(?m)^ok +process +runs it`, r.stdout)
	assert.Contains(t, r.stdout, "profile auto would run it in the thread profile")
	assert.Contains(t, r.stdout, "  greet(name, punctuation='!')  [thread-safe]\n      Say hello to name.\n")
	assert.Contains(t, r.stdout, "  count(n)  [stream, thread-safe]\n") // ctx is not an argument

	r = snakepit(t, nil, "check", "-json", "greeter", "-path", ".")
	require.Equal(t, 0, r.code, "exit status; stderr:\n%s", r.stderr)
	var rep checkReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), "check -json output %s", r.stdout)
	assert.True(t, rep.Thread.Runs, "thread runs it: %+v", rep.Thread)
	assert.True(t, rep.Process.Runs, "process runs it: %+v", rep.Process)
	assert.Equal(t, "thread", rep.Auto)
	names := make([]string, 0, len(rep.Commands))
	for _, c := range rep.Commands {
		names = append(names, c.Name)
	}
	assert.Equal(t, []string{"blob", "count", "fail", "greet", "session_id"}, names)
}

func TestCheckSinglePhaseAdapter(t *testing.T) {
	r := snakepit(t, nil, "check", "singlephase")
	require.Equal(t, 0, r.code, "exit status; stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	assert.Regexp(t, `(?m)^no +thread +does not run it \(the module or one it imports refuses sub-interpreters: use the process profile\)`, r.stdout)
	assert.Contains(t, r.stdout, "module _testsinglephase does not support loading in subinterpreters")
	assert.Regexp(t, `(?m)^ok +process +runs it`, r.stdout)
	assert.Contains(t, r.stdout, "profile auto would run it in the process profile")
	assert.Contains(t, r.stdout, "  ping()\n      Answer pong.\n")

	r = snakepit(t, nil, "check", "-json", "singlephase")
	require.Equal(t, 0, r.code)
	var rep checkReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	assert.False(t, rep.Thread.Runs)
	assert.True(t, rep.Thread.NotSubinterpreterSafe, "not_subinterpreter_safe")
	assert.True(t, rep.Process.Runs)
	assert.Equal(t, "process", rep.Auto)
}

func TestCheckNoProfile(t *testing.T) {
	r := snakepit(t, nil, "check", "no_such_adapter")
	assert.Equal(t, 1, r.code, "exit status; stdout:\n%s", r.stdout)
	assert.Contains(t, r.stdout, "No module named 'no_such_adapter'")
	assert.Contains(t, r.stdout, "no profile runs it")
}

// staticPython writes an interpreter that package locate sees as a CPython
// without a shared libpython (as many distribution and pyenv builds are):
// the hermetic one, whose answer to locate's query loses the library.
func staticPython(t *testing.T) string {
	t.Helper()
	py, err := dist.Default()
	require.NoError(t, err)
	exe := filepath.Join(t.TempDir(), "python3")
	script := "#!/bin/sh\n" +
		"case \"$*\" in\n" +
		"*sysconfig*) " + py.Executable + " \"$@\" | sed 's/\"lib\": \"[^\"]*\"/\"lib\": \"\"/'; exit $? ;;\n" +
		"esac\n" +
		"exec " + py.Executable + " \"$@\"\n"
	require.NoError(t, os.WriteFile(exe, []byte(script), 0o755))
	q, err := locate.Query(exe)
	require.NoError(t, err)
	require.Empty(t, q.LibPython, "the static interpreter's library")
	return exe
}

func TestWithoutSharedLibpython(t *testing.T) {
	exe := staticPython(t)
	r := snakepit(t, nil, "call", "-v", "-python", exe, "greeter", "greet", `{"name": "static"}`)
	require.Equal(t, 0, r.code, "call: exit status; stderr:\n%s", r.stderr)
	assert.JSONEq(t, `{"greeting": "hello static!", "length": 6}`, r.stdout)
	assert.Contains(t, r.stderr, "starting process workers", "the profile Auto chose")
	assert.Contains(t, r.stderr, "no libpython", "why")

	r = snakepit(t, nil, "call", "-profile", "thread", "-python", exe, "greeter", "greet", `{"name": "static"}`)
	assert.Equal(t, 1, r.code, "call -profile thread: exit status")
	assert.Contains(t, r.stderr, "no libpython")

	r = snakepit(t, nil, "check", "-json", "-python", exe, "greeter")
	require.Equal(t, 0, r.code, "check: exit status; stderr:\n%s", r.stderr)
	var rep checkReport
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep))
	assert.False(t, rep.Thread.Runs)
	assert.Contains(t, rep.Thread.Error, "cannot load libpython")
	assert.True(t, rep.Process.Runs)
	assert.Equal(t, "process", rep.Auto)
	assert.Len(t, rep.Commands, 5, "commands listed by the child process")

	r = snakepit(t, []string{locate.EnvPython + "=" + exe}, "doctor")
	assert.Equal(t, 0, r.code, "doctor: exit status; stdout:\n%s", r.stdout)
	assert.Regexp(t, `(?m)^warn +environment +.*no shared libpython`, r.stdout)
	assert.Regexp(t, `(?m)^warn +thread profile +unavailable`, r.stdout)
	assert.Regexp(t, `(?m)^ok +process profile `, r.stdout)
}

func TestCall(t *testing.T) {
	for _, profile := range []string{"thread", "process", "auto"} {
		t.Run(profile, func(t *testing.T) {
			r := snakepit(t, nil, "call", "-profile", profile, "greeter", "greet", `{"name": "gopher", "punctuation": "?"}`)
			require.Equal(t, 0, r.code, "exit status; stderr:\n%s", r.stderr)
			assert.JSONEq(t, `{"greeting": "hello gopher?", "length": 6}`, r.stdout)
			assert.Empty(t, r.stderr)
		})
	}
}

func TestCallStream(t *testing.T) {
	r := snakepit(t, nil, "call", "greeter", "count", `{"n": 3}`)
	require.Equal(t, 0, r.code, "exit status; stderr:\n%s", r.stderr)
	assert.Equal(t, "{\"i\":0}\n{\"i\":1}\n{\"i\":2}\n", r.stdout)
}

func TestCallPythonException(t *testing.T) {
	r := snakepit(t, nil, "call", "greeter", "fail", `{"message": "no snakes today"}`)
	assert.Equal(t, 1, r.code, "exit status")
	assert.Empty(t, r.stdout)
	assert.Contains(t, r.stderr, "python: ValueError: no snakes today")
	assert.Contains(t, r.stderr, "Traceback (most recent call last):")
}

func TestCallErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"call", "greeter", "nosuch"}, `command "nosuch" not found`},
		{[]string{"call", "no_such_adapter", "greet"}, "No module named 'no_such_adapter'"},
		{[]string{"call", "greeter", "greet", `{"nom": "x"}`}, "greet"},
		{[]string{"call", "-profile", "thread", "singlephase", "ping"}, "does not support loading in subinterpreters"},
	} {
		r := snakepit(t, nil, tc.args...)
		assert.Equal(t, 1, r.code, "snakepit %q: exit status (stderr %s)", tc.args, r.stderr)
		assert.Contains(t, r.stderr, tc.want, "snakepit %q: stderr", tc.args)
		assert.Empty(t, r.stdout, "snakepit %q: stdout", tc.args)
	}
}

func TestCallValues(t *testing.T) {
	r := snakepit(t, nil, "call", "-profile", "process", "greeter", "blob")
	require.Equal(t, 0, r.code, "exit status; stderr:\n%s", r.stderr)
	assert.Equal(t, `"`+base64.StdEncoding.EncodeToString([]byte("\x00\x01snake"))+`"`+"\n", r.stdout)

	r = snakepit(t, nil, "call", "greeter", "session_id", "-session", "s-42")
	require.Equal(t, 0, r.code, "exit status; stderr:\n%s", r.stderr)
	assert.Equal(t, "\"s-42\"\n", r.stdout)

	r = snakepit(t, nil, "call", "-profile", "auto", "-v", "singlephase", "ping")
	require.Equal(t, 0, r.code, "exit status; stderr:\n%s", r.stderr)
	assert.Equal(t, "\"pong\"\n", r.stdout)
	assert.Contains(t, r.stderr, "starting process workers", "-v logs the profile Auto chose")
}

func TestParseKwargs(t *testing.T) {
	got, err := parseKwargs(`{"i": 3, "big": 12345678901234567890, "f": 1.5, "l": [1, {"x": -2}], "s": "x", "n": null}`)
	require.NoError(t, err)
	assert.Equal(t, map[string]any{
		"i": int64(3), "big": 12345678901234567890.0, "f": 1.5,
		"l": []any{int64(1), map[string]any{"x": int64(-2)}}, "s": "x", "n": nil,
	}, got)
	for _, bad := range []string{``, `1`, `"x"`, `null`, `{} {}`, `{"a":}`} {
		_, err := parseKwargs(bad)
		assert.Error(t, err, "parseKwargs(%q)", bad)
	}
}
