package subproc_test

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/subproc"
	"github.com/snakepit-go/snakepit/worker"
)

const envFakeChild = "SNAKEPIT_TEST_FAKE_CHILD"

// TestFakeChild is not a test: it is the body of a fake worker process (the
// test binary re-executed) that misbehaves in the way its environment says.
func TestFakeChild(t *testing.T) {
	mode := os.Getenv(envFakeChild)
	if mode == "" {
		t.Log("runs only as a fake worker process")
		return
	}
	sock := os.NewFile(3, "sock")
	send := func(typ byte, id uint64, payload []byte) {
		var h [13]byte
		binary.LittleEndian.PutUint32(h[0:4], uint32(len(payload)))
		h[4] = typ
		binary.LittleEndian.PutUint64(h[5:13], id)
		sock.Write(append(h[:], payload...))
	}
	hello := func(version int) []byte {
		b, _ := pymarshal.Marshal(map[string]any{"protocol": version, "pid": os.Getpid(), "commands": map[string]any{}})
		return b
	}
	readFrame := func() (byte, uint64, bool) {
		var h [13]byte
		if _, err := readFull(sock, h[:]); err != nil {
			return 0, 0, false
		}
		payload := make([]byte, binary.LittleEndian.Uint32(h[0:4]))
		readFull(sock, payload)
		return h[4], binary.LittleEndian.Uint64(h[5:13]), true
	}
	os.Stderr.WriteString("fake child: mode " + mode + "\n")
	if mode == "script" {
		scriptChild()
		return
	}
	switch mode {
	case "garbage":
		sock.Write([]byte("this is not a frame at all, just noise.........."))
	case "oversized":
		var h [13]byte
		binary.LittleEndian.PutUint32(h[0:4], 1<<30)
		h[4] = 1
		sock.Write(h[:])
	case "truncated":
		b := hello(subproc.ProtocolVersion)
		var h [13]byte
		binary.LittleEndian.PutUint32(h[0:4], uint32(len(b)))
		h[4] = 1
		sock.Write(append(h[:], b[:len(b)/2]...))
		sock.Close()
	case "silent":
		time.Sleep(time.Minute)
	case "wrong-version":
		send(1, 0, hello(99))
	case "slow-hello":
		time.Sleep(300 * time.Millisecond)
		send(1, 0, hello(subproc.ProtocolVersion))
	case "no-pong":
		send(1, 0, hello(subproc.ProtocolVersion))
	case "garbage-reply":
		send(1, 0, hello(subproc.ProtocolVersion))
		if typ, id, ok := readFrame(); ok && typ == 3 {
			send(4, id, nil) // PONG
		}
		if _, id, ok := readFrame(); ok {
			send(11, id+7, []byte("N")) // a reply to another request
		}
	case "exit":
		os.Stderr.WriteString("fake child: exiting with 3\n")
		os.Exit(3)
	}
	if mode == "slow-hello" || mode == "no-pong" || mode == "garbage-reply" {
		// Serve until the host goes away.
		for {
			typ, id, ok := readFrame()
			if !ok {
				os.Exit(0)
			}
			switch typ {
			case 3:
				if mode != "no-pong" {
					send(4, id, nil)
				}
			case 10:
				send(11, id, []byte("N"))
				os.Exit(0)
			}
		}
	}
	time.Sleep(time.Minute) // until killed
}

func readFull(f *os.File, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := f.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func fakeConfig(t *testing.T, mode string) subproc.Config {
	return subproc.Config{
		Module:       "unused",
		Command:      []string{os.Args[0], "-test.run=^TestFakeChild$", "--"},
		Env:          []string{envFakeChild + "=" + mode},
		StartTimeout: 30 * time.Second, // a -race test binary can start slowly
		StopGrace:    time.Second,
		Registry:     testRegistry(t),
	}
}

// TestProtocolEdgeCases: a child that misbehaves before it is ready is
// killed and reported, with its stderr, and leaves no process behind.
func TestProtocolEdgeCases(t *testing.T) {
	cases := []struct {
		mode string
		want []error
		text string
	}{
		{"garbage", []error{worker.ErrSetup, worker.ErrWorkerDead}, "broke the protocol"},
		{"oversized", []error{worker.ErrSetup, subproc.ErrFrameTooLarge}, "too large"},
		{"truncated", []error{worker.ErrSetup, subproc.ErrTruncated}, "truncated"},
		{"silent", []error{worker.ErrSetup}, "start timeout"},
		{"wrong-version", []error{worker.ErrSetup, worker.ErrWorkerDead}, "protocol version 99"},
		{"no-pong", []error{worker.ErrSetup}, "PONG"},
		{"exit", []error{worker.ErrSetup, worker.ErrWorkerDead}, "exiting with 3"},
	}
	for _, tc := range cases {
		t.Run(tc.mode, func(t *testing.T) {
			cfg := fakeConfig(t, tc.mode)
			if tc.mode == "silent" || tc.mode == "no-pong" {
				cfg.StartTimeout = 2 * time.Second // these wait for it
			}
			w, err := subproc.Start(context.Background(), cfg)
			if err == nil {
				w.Close(context.Background())
				t.Fatal("started, want an error")
			}
			for _, want := range tc.want {
				if !errors.Is(err, want) {
					t.Fatalf("got %v, want it to match %v", err, want)
				}
			}
			if !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("got %q, want it to mention %q", err, tc.text)
			}
			if !strings.Contains(err.Error(), "fake child: mode "+tc.mode) && tc.mode != "oversized" && tc.mode != "garbage" {
				t.Logf("note: stderr tail not in %q", err)
			}
			assertNoChildren(t)
		})
	}
	t.Run("slow-hello", func(t *testing.T) {
		w, err := subproc.Start(context.Background(), fakeConfig(t, "slow-hello"))
		if err != nil {
			t.Fatalf("a slow but correct child must start: %v", err)
		}
		if err := w.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		assertNoChildren(t)
	})
	t.Run("reply to another request", func(t *testing.T) {
		w, err := subproc.Start(context.Background(), fakeConfig(t, "garbage-reply"))
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close(context.Background())
		_, err = w.Call(context.Background(), &worker.Request{Command: "x"})
		if !errors.Is(err, worker.ErrWorkerDead) || !errors.Is(err, subproc.ErrBadFrame) {
			t.Fatalf("got %v, want ErrWorkerDead and ErrBadFrame", err)
		}
		<-w.Done()
		w.Close(context.Background())
		assertNoChildren(t)
	})
	t.Run("start cancelled", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		cfg := fakeConfig(t, "silent")
		cfg.StartTimeout = time.Minute
		_, err := subproc.Start(ctx, cfg)
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, worker.ErrSetup) {
			t.Fatalf("got %v, want DeadlineExceeded", err)
		}
		assertNoChildren(t)
	})
	t.Run("missing interpreter", func(t *testing.T) {
		_, err := subproc.Start(context.Background(), subproc.Config{Module: "x", Python: "/nonexistent/python3", Registry: testRegistry(t)})
		if !errors.Is(err, worker.ErrSetup) || !strings.Contains(err.Error(), "/nonexistent/python3") {
			t.Fatalf("got %v", err)
		}
	})
}

// assertNoChildren checks that this process has no child processes left
// (zombies included), waiting briefly for ones being reaped.
func assertNoChildren(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		kids := children(os.Getpid())
		if len(kids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("child processes left behind: %v", kids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func children(pid int) []string {
	var out []string
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/children")
		if err == nil {
			out = append(out, strings.Fields(string(b))...)
		}
	}
	return out
}
