package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/remote"
)

// The remote scenario re-executes this program as serving instances: with
// envRemoteServe set to a NATS URL it serves a one-worker pool of the
// benchmark adapter (envRemoteDir) until its standard input closes: a
// process pool (envRemotePython) named "bench", or with envRemoteThread
// set a thread pool (envRemoteThread: the libpython) named
// "bench-thread".
const (
	envRemoteServe    = "SNAKEPIT_BENCH_REMOTE_SERVE"
	envRemoteDir      = "SNAKEPIT_BENCH_REMOTE_DIR"
	envRemotePython   = "SNAKEPIT_BENCH_REMOTE_PYTHON"
	envRemotePassword = "SNAKEPIT_BENCH_REMOTE_PASSWORD"
	envRemoteThread   = "SNAKEPIT_BENCH_REMOTE_THREAD"
	remoteUser        = "bench"
	remotePool        = "bench"
	remoteThreadPool  = "bench-thread"
	echoSubject       = "bench.echo"
)

func init() {
	if url := os.Getenv(envRemoteServe); url != "" {
		if err := remoteServe(url); err != nil {
			fmt.Fprintln(os.Stderr, "bench: serving instance:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

func remoteServe(url string) error {
	ctx := context.Background()
	nc, err := nats.Connect(url, nats.UserInfo(remoteUser, os.Getenv(envRemotePassword)))
	if err != nil {
		return err
	}
	defer nc.Close()
	cfg := pool.Config{Name: remotePool, Profile: pool.Process, Module: "bench_adapter",
		Paths: []string{os.Getenv(envRemoteDir)}, Python: os.Getenv(envRemotePython), Size: 1, QueueSize: 4096}
	if lib := os.Getenv(envRemoteThread); lib != "" {
		cfg.Name, cfg.Profile, cfg.Python, cfg.LibPython = remoteThreadPool, pool.Thread, "", lib
	}
	p, err := pool.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer p.Close(ctx)
	srv, err := remote.Serve(ctx, nc, p, remote.ServeOptions{})
	if err != nil {
		return err
	}
	// A bare NATS responder beside it: the floor of a round trip.
	if _, err := nc.Subscribe(echoSubject, func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		return err
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin) // until the benchmark closes it (or exits)
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// servingInstance is a serving process of the remote scenario.
type servingInstance struct {
	cmd   *exec.Cmd
	stdin io.Closer
}

func (e *env) startServing(url, password string, thread bool) (*servingInstance, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envRemoteServe+"="+url, envRemoteDir+"="+e.dir,
		envRemotePython+"="+e.exe, envRemotePassword+"="+password)
	if thread {
		cmd.Env = append(cmd.Env, envRemoteThread+"="+e.o.libpython)
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "READY" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("serving instance did not start: %q, %v", line, err)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return &servingInstance{cmd: cmd, stdin: stdin}, nil
}

func (s *servingInstance) stop() error {
	_ = s.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		return errors.Join(errors.New("serving instance did not stop"), <-done)
	}
}

// remoteBench: a no-op through NATS (an embedded server on loopback, the
// pool served by other processes) against the same call on a local
// process pool, and throughput with 1, 2 and 4 serving processes of one
// worker each against a local pool of as many workers.
func (e *env) remoteBench(ctx context.Context) ([]Result, error) {
	pw := make([]byte, 16)
	_, _ = rand.Read(pw)
	password := hex.EncodeToString(pw)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		Users: []*server.User{{Username: remoteUser, Password: password}}})
	if err != nil {
		return nil, err
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		return nil, errors.New("nats server did not start")
	}
	url := ns.ClientURL()
	var instances []*servingInstance
	defer func() {
		for _, in := range instances {
			_ = in.stop()
		}
	}()
	grow := func(n int) error {
		for len(instances) < n {
			e.progress(fmt.Sprintf("remote: starting serving process %d", len(instances)+1))
			in, err := e.startServing(url, password, false)
			if err != nil {
				return err
			}
			instances = append(instances, in)
		}
		return nil
	}
	if err := grow(1); err != nil {
		return nil, err
	}
	nc, err := nats.Connect(url, nats.UserInfo(remoteUser, password))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	rp, err := remote.New(nc, remotePool, remote.Options{})
	if err != nil {
		return nil, err
	}
	defer rp.Close(ctx)
	local, err := e.newPool(ctx, "process", 1)
	if err != nil {
		return nil, err
	}
	defer local.Close(ctx)
	callLocal := func(p *pool.Pool) func() error {
		return func() error { _, err := p.CallRaw(ctx, "noop", noopArgs); return err }
	}
	callRemote := func() error { _, err := rp.CallRaw(ctx, "noop", noopArgs); return err }

	callEcho := func() error { _, err := nc.Request(echoSubject, noopArgs, 10*time.Second); return err }
	// The same pool served by a thread-profile instance: no second
	// process behind the serving one.
	var callThread func() error
	if e.has("thread") {
		e.progress("remote: starting a thread-profile serving process")
		in, err := e.startServing(url, password, true)
		if err != nil {
			return nil, err
		}
		defer in.stop()
		rpt, err := remote.New(nc, remoteThreadPool, remote.Options{})
		if err != nil {
			return nil, err
		}
		defer rpt.Close(ctx)
		callThread = func() error { _, err := rpt.CallRaw(ctx, "noop", noopArgs); return err }
	}

	// Latency at one caller, repetitions interleaved: the local pool, the
	// remote pool (a process-profile instance, and a thread-profile one),
	// and a bare NATS request to a responder in the serving process (no
	// Python: the transport's floor).
	var locals, remotes, threads, echoes []Result
	for rep := range e.o.reps {
		e.progress(fmt.Sprintf("remote: latency (repetition %d/%d)", rep+1, e.o.reps))
		r, err := e.measure(1, callLocal(local))
		if err != nil {
			return nil, err
		}
		locals = append(locals, r)
		if r, err = e.measure(1, callRemote); err != nil {
			return nil, err
		}
		remotes = append(remotes, r)
		if callThread != nil {
			if r, err = e.measure(1, callThread); err != nil {
				return nil, err
			}
			threads = append(threads, r)
		}
		if r, err = e.measure(1, callEcho); err != nil {
			return nil, err
		}
		echoes = append(echoes, r)
	}
	l, r, x := median(locals), median(remotes), median(echoes)
	l.Scenario, l.Profile, l.Workers = "remote-latency", "process-local", 1
	r.Scenario, r.Profile, r.Workers = "remote-latency", "nats-remote", 1
	x.Scenario, x.Profile, x.Param = "remote-latency", "nats-request", "no Python"
	if l.P50 > 0 {
		r.Param = fmt.Sprintf("p50 %.2fx local", float64(r.P50)/float64(l.P50))
	}
	out := []Result{l, r}
	if len(threads) > 0 {
		t := median(threads)
		t.Scenario, t.Profile, t.Workers = "remote-latency", "nats-remote-thread", 1
		if l.P50 > 0 {
			t.Param = fmt.Sprintf("p50 %.2fx local", float64(t.P50)/float64(l.P50))
		}
		out = append(out, t)
	}
	out = append(out, x)

	// Throughput with 1, 2, 4 serving processes.
	callers := 16
	if e.o.quick {
		callers = 8
	}
	for _, n := range []int{1, 2, 4} {
		if err := grow(n); err != nil {
			return nil, err
		}
		e.progress(fmt.Sprintf("remote: throughput, %d serving processes", n))
		r, err := e.repeat(func() (Result, error) { return e.measure(callers, callRemote) })
		if err != nil {
			return nil, err
		}
		r.Scenario, r.Profile, r.Workers, r.Param = "remote-throughput", "nats-remote", n, "instances="+strconv.Itoa(n)
		out = append(out, r)
		lp, err := e.newPool(ctx, "process", n)
		if err != nil {
			return nil, err
		}
		e.progress(fmt.Sprintf("remote: throughput, local pool of %d", n))
		lr, err := e.repeat(func() (Result, error) { return e.measure(callers, callLocal(lp)) })
		lp.Close(ctx)
		if err != nil {
			return nil, err
		}
		lr.Scenario, lr.Profile, lr.Workers = "remote-throughput", "process-local", n
		out = append(out, lr)
	}
	return out, nil
}
