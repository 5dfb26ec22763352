package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sys/unix"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/remote"
)

// The environment variables serve reads a NATS user and password from
// (kept out of the command line, which other users of the machine see).
const (
	envNATSUser     = "SNAKEPIT_NATS_USER"
	envNATSPassword = "SNAKEPIT_NATS_PASSWORD"
)

func init() {
	register(command{
		name: "serve",
		args: "MODULE",
		summary: `Serve a pool of an adapter module over NATS until SIGINT or SIGTERM.

The pool is the NATS micro service snakepit-<name>; callers reach it with
remote.New(nc, "<name>", ...) from any machine on the same NATS. Every
instance serving the same name joins one queue group, so calls spread over
them. On SIGINT or SIGTERM the instance stops taking calls, finishes the
ones it runs (at most -grace), closes its pool and exits 0.

Credentials: -creds (a JWT credentials file), -nkey (an nkey seed file), or
a user and password from the environment (` + envNATSUser + `,
` + envNATSPassword + `); -tls-ca, -tls-cert and -tls-key for TLS. A
warning is logged when none is given: serve only on a NATS server that
authenticates its clients.`,
		flags: func(fs *flag.FlagSet) func([]string, io.Writer, io.Writer) int {
			var o serveOptions
			fs.StringVar(&o.url, "nats", nats.DefaultURL, "the NATS server `URL`s (comma-separated)")
			fs.StringVar(&o.name, "name", "", "the pool's `NAME` callers use; default: MODULE")
			fs.StringVar(&o.profile, "profile", "auto", "worker profile: thread, process or auto")
			fs.StringVar(&o.python, "python", "", "the `PATH` of the Python interpreter to use, as SNAKEPIT_PYTHON")
			fs.Var(&o.paths, "path", "`DIR` to put on the adapter's sys.path (repeatable); default: the current directory")
			fs.IntVar(&o.size, "size", 0, "number of workers; 0: one per CPU")
			fs.IntVar(&o.concurrency, "concurrency", 1, "calls one worker runs at once (async handlers, thread-safe adapters)")
			fs.DurationVar(&o.grace, "grace", 30*time.Second, "how long a shutdown waits for the calls in progress")
			fs.StringVar(&o.creds, "creds", "", "NATS credentials `FILE` (JWT and nkey seed)")
			fs.StringVar(&o.nkey, "nkey", "", "NATS nkey seed `FILE`")
			fs.StringVar(&o.tlsCA, "tls-ca", "", "`FILE` of CA certificates to verify the NATS server with")
			fs.StringVar(&o.tlsCert, "tls-cert", "", "client certificate `FILE` for TLS (with -tls-key)")
			fs.StringVar(&o.tlsKey, "tls-key", "", "client key `FILE` for TLS (with -tls-cert)")
			fs.BoolVar(&o.verbose, "v", false, "log the pool's events and the adapter's log records at debug level (info otherwise)")
			return o.run
		},
	})
}

type serveOptions struct {
	url, name, profile, python          string
	creds, nkey, tlsCA, tlsCert, tlsKey string
	paths                               stringList
	size, concurrency                   int
	grace                               time.Duration
	verbose                             bool
}

// natsOptions returns the connection options the flags and the
// environment ask for, and whether any authenticates the client.
func (o *serveOptions) natsOptions() ([]nats.Option, bool, error) {
	opts := []nats.Option{nats.Name("snakepit serve " + o.name)}
	auth := false
	if o.creds != "" {
		opts = append(opts, nats.UserCredentials(o.creds))
		auth = true
	}
	if o.nkey != "" {
		opt, err := nats.NkeyOptionFromSeed(o.nkey)
		if err != nil {
			return nil, false, fmt.Errorf("-nkey: %w", err)
		}
		opts = append(opts, opt)
		auth = true
	}
	if u := os.Getenv(envNATSUser); u != "" {
		opts = append(opts, nats.UserInfo(u, os.Getenv(envNATSPassword)))
		auth = true
	}
	if o.tlsCA != "" {
		opts = append(opts, nats.RootCAs(o.tlsCA))
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return nil, false, &usageError{"-tls-cert and -tls-key go together"}
	}
	if o.tlsCert != "" {
		opts = append(opts, nats.ClientCert(o.tlsCert, o.tlsKey))
		auth = true
	}
	return opts, auth, nil
}

func (o *serveOptions) run(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintf(stderr, "snakepit serve: want MODULE, got %d arguments (snakepit serve -h explains)\n", len(args))
		return exitUsage
	}
	module := args[0]
	if o.name == "" {
		o.name = module
	}
	profile, ok := map[string]pool.Profile{"thread": pool.Thread, "process": pool.Process, "auto": pool.Auto}[o.profile]
	if !ok {
		fmt.Fprintf(stderr, "snakepit serve: -profile must be thread, process or auto, got %q\n", o.profile)
		return exitUsage
	}
	if o.size < 0 || o.concurrency < 1 || o.grace < 0 {
		fmt.Fprintln(stderr, "snakepit serve: -size must not be negative, -concurrency at least 1, -grace not negative")
		return exitUsage
	}
	natsOpts, auth, err := o.natsOptions()
	if err != nil {
		fmt.Fprintf(stderr, "snakepit serve: %v\n", err)
		if _, ok := err.(*usageError); ok {
			return exitUsage
		}
		return exitFail
	}
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if !auth {
		log.Warn("serving without client credentials: serve only on a NATS server that authenticates its clients (see -creds, -nkey, " + envNATSUser + ")")
	}
	usePython(o.python)
	paths, err := absPaths(o.paths)
	if err != nil {
		fmt.Fprintf(stderr, "snakepit serve: -path: %v\n", err)
		return exitUsage
	}

	// SIGINT or SIGTERM ends serving (a drain); a second one exits at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()

	nc, err := nats.Connect(o.url, natsOpts...)
	if err != nil {
		return fail(stderr, fmt.Errorf("connect to NATS at %s: %w", o.url, err))
	}
	defer nc.Close()
	p, err := pool.New(ctx, pool.Config{
		Name: o.name, Profile: profile, Module: module, Paths: paths, Python: o.python,
		Size: o.size, WorkerConcurrency: o.concurrency, Logger: log,
	})
	if err != nil {
		return fail(stderr, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = p.Close(cctx)
	}()
	log.Info("serving", "pool", o.name, "nats", nc.ConnectedUrlRedacted(), "workers", p.Stats().Workers)
	if err := remote.Run(ctx, nc, p, remote.ServeOptions{Logger: log}, o.grace); err != nil {
		return fail(stderr, err)
	}
	log.Info("drained", "pool", o.name)
	return exitOK
}
