package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/remote"
)

// syncBuffer is a bytes.Buffer safe to read while a command writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestServe: snakepit serve, authenticated by a user and password from
// the environment, serves the adapter's pool over an embedded NATS server
// until SIGTERM: a remote call gets the handler's result, and SIGTERM
// drains and exits 0. Without credentials it warns; bad flags exit 2.
func TestServe(t *testing.T) {
	const user, password = "svc", "test-only-secret"
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		Users: []*server.User{{Username: user, Password: password}}})
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second), "nats server ready")
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // hang guard
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "serve", "-nats", ns.ClientURL(), "-name", "greeter-pool",
		"-profile", "process", "-size", "1", "-grace", "10s", "greeter")
	cmd.Dir = "testdata"
	cmd.Env = append(os.Environ(), envNATSUser+"="+user, envNATSPassword+"="+password)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(user, password))
	require.NoError(t, err)
	defer nc.Close()
	rp, err := remote.New(nc, "greeter-pool", remote.Options{})
	require.NoError(t, err)
	defer rp.Close(context.Background())

	// The instance is up once a call finds a responder.
	var out struct {
		Greeting string `json:"greeting"`
	}
	for {
		err = rp.Call(ctx, "greet", map[string]any{"name": "nats"}, &out)
		if !errors.Is(err, remote.ErrNoResponders) {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("serve exited before serving: %v; stderr:\n%s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	require.NoError(t, err, "stderr:\n%s", stderr.String())
	assert.Equal(t, "hello nats!", out.Greeting)
	assert.NotContains(t, stderr.String(), "without client credentials")

	require.NoError(t, cmd.Process.Signal(unix.SIGTERM))
	select {
	case err := <-exited:
		require.NoError(t, err, "serve's exit after SIGTERM; stderr:\n%s", stderr.String())
	case <-ctx.Done():
		t.Fatalf("serve did not exit after SIGTERM; stderr:\n%s", stderr.String())
	}
	assert.Contains(t, stderr.String(), "drained")

	// Without credentials (the server refuses the connection here): the
	// warning, then the connection's error, exit 1.
	r := snakepit(t, nil, "serve", "-nats", ns.ClientURL(), "-profile", "process", "greeter")
	assert.Equal(t, exitFail, r.code)
	assert.Contains(t, r.stderr, "without client credentials")
	assert.Contains(t, r.stderr, "connect to NATS")

	for _, args := range [][]string{
		{"serve"},
		{"serve", "-profile", "gpu", "greeter"},
		{"serve", "-tls-cert", "c.pem", "greeter"},
		{"serve", "-concurrency", "0", "greeter"},
	} {
		assert.Equal(t, exitUsage, snakepit(t, nil, args...).code, "snakepit %q", args)
	}
}
