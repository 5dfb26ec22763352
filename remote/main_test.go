package remote_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/pool"
	_ "github.com/snakepit-go/snakepit/python/dist" // the hermetic CPython 3.14
	"github.com/snakepit-go/snakepit/remote"
)

// The test binary, re-executed with envServe set, is a serving instance:
// it connects to the NATS server at that URL, starts a pool on
// testdata/remote_adapter.py and serves it until SIGTERM (a graceful
// Shutdown) or until its standard input closes (the test is gone).
const (
	envServe   = "SNAKEPIT_REMOTE_SERVE"
	envProfile = "SNAKEPIT_REMOTE_PROFILE" // "thread" or "process"
	envSize    = "SNAKEPIT_REMOTE_SIZE"
	envQueue   = "SNAKEPIT_REMOTE_QUEUE"
	envName    = "SNAKEPIT_REMOTE_NAME"
	envTag     = "SNAKEPIT_REMOTE_TAG"
	envRecord  = "SNAKEPIT_REMOTE_RECORD"
	envDir     = "SNAKEPIT_REMOTE_ADAPTERS"

	testUser     = "snakepit"
	testPassword = "s3cret-for-tests"
)

func TestMain(m *testing.M) {
	if url := os.Getenv(envServe); url != "" {
		if err := serveMain(url); err != nil {
			fmt.Fprintln(os.Stderr, "serve:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func serveMain(url string) error {
	ctx := context.Background()
	term := make(chan os.Signal, 1)
	signal.Notify(term, unix.SIGTERM)
	nc, err := nats.Connect(url, nats.UserInfo(testUser, testPassword), nats.Name(os.Getenv(envTag)))
	if err != nil {
		return err
	}
	defer nc.Close()
	cfg := pool.Config{Name: os.Getenv(envName), Module: "remote_adapter", Paths: []string{os.Getenv(envDir)},
		Env: []string{envTag + "=" + os.Getenv(envTag), envRecord + "=" + os.Getenv(envRecord)}}
	if os.Getenv(envProfile) == "process" {
		cfg.Profile = pool.Process
	}
	cfg.Size, _ = strconv.Atoi(os.Getenv(envSize))
	cfg.QueueSize, _ = strconv.Atoi(os.Getenv(envQueue))
	p, err := pool.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer p.Close(ctx)
	srv, err := remote.Serve(ctx, nc, p, remote.ServeOptions{})
	if err != nil {
		return err
	}
	fmt.Printf("READY %s\n", srv.Instance())
	stdin := make(chan struct{})
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		close(stdin)
	}()
	select {
	case <-term:
	case <-stdin:
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	fmt.Println("LEFT")
	return nil
}

// natsServer starts an embedded NATS server on a random loopback port that
// takes only the test user, and returns its URL.
func natsServer(t *testing.T, maxPayload int32) string {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		Users: []*server.User{{Username: testUser, Password: testPassword}}, MaxPayload: maxPayload}
	ns, err := server.NewServer(opts)
	require.NoError(t, err)
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns.ClientURL()
}

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.UserInfo(testUser, testPassword))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	return nc
}

// instance is a serving process.
type instance struct {
	tag   string
	id    string // its micro service instance id
	cmd   *exec.Cmd
	stdin interface{ Close() error }
	lines chan string // its standard output after READY
	done  chan error  // its exit
}

type instanceOpts struct {
	name    string // pool name; zero: "py"
	profile string // zero: "process"
	size    int    // zero: 2
	queue   int    // QueueSize
	record  string // directory the record command writes to
}

var adapterDir = func() string {
	d, err := filepath.Abs("testdata")
	if err != nil {
		panic(err)
	}
	return d
}()

// startInstance starts a serving process and waits until it serves.
func startInstance(t *testing.T, url, tag string, o instanceOpts) *instance {
	t.Helper()
	if o.name == "" {
		o.name = "py"
	}
	if o.profile == "" {
		o.profile = "process"
	}
	if o.size == 0 {
		o.size = 2
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envServe+"="+url, envProfile+"="+o.profile, envSize+"="+strconv.Itoa(o.size),
		envQueue+"="+strconv.Itoa(o.queue), envName+"="+o.name, envTag+"="+tag, envRecord+"="+o.record, envDir+"="+adapterDir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	in := &instance{tag: tag, cmd: cmd, stdin: stdin, lines: make(chan string, 16), done: make(chan error, 1)}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if id, ok := strings.CutPrefix(line, "READY "); ok {
				ready <- id
				continue
			}
			select {
			case in.lines <- line:
			default:
			}
		}
		close(in.lines)
		in.done <- cmd.Wait()
	}()
	t.Cleanup(func() { in.stop(t) })
	select {
	case in.id = <-ready:
	case err := <-in.done:
		in.done <- err
		t.Fatalf("instance %s exited before serving: %v", tag, err)
	case <-time.After(60 * time.Second):
		t.Fatalf("instance %s not ready in 60 s", tag)
	}
	return in
}

// stop ends the instance (closing its standard input: a graceful
// shutdown), killing it if it does not exit.
func (in *instance) stop(t *testing.T) {
	_ = in.stdin.Close()
	select {
	case err := <-in.done:
		in.done <- err
	case <-time.After(30 * time.Second):
		_ = in.cmd.Process.Kill()
		<-in.done
		t.Errorf("instance %s did not stop", in.tag)
	}
}

// kill SIGKILLs the instance and waits for its exit.
func (in *instance) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, in.cmd.Process.Signal(unix.SIGKILL))
	err := <-in.done
	in.done <- err
}

func newClient(t *testing.T, nc *nats.Conn, name string, o remote.Options) *remote.Pool {
	t.Helper()
	p, err := remote.New(nc, name, o)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, p.Close(ctx))
	})
	return p
}
