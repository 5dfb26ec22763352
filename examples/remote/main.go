// Command remote serves a pool over NATS and calls it from a client, as
// two machines would: an embedded NATS server (loopback, random port)
// that admits only holders of two nkeys, one for the serving side and
// one for callers, each allowed only the subjects its part needs.
//
//	go run ./examples/remote
package main

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/snakepit-go/snakepit/examples/internal/adapters"
	"github.com/snakepit-go/snakepit/pool"
	_ "github.com/snakepit-go/snakepit/python/dist" // the hermetic CPython 3.14
	"github.com/snakepit-go/snakepit/remote"
)

func main() {
	ctx := context.Background()
	servingKey, servingPub := newUser()
	callerKey, callerPub := newUser()

	// The NATS server. In production: a NATS cluster you run, with the
	// same kind of accounts and permissions in its configuration.
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		Nkeys: []*server.NkeyUser{
			{Nkey: servingPub, Permissions: &server.Permissions{
				// Serve snakepit.v1.stats.*, answer on callers' inboxes
				// and $SRV discovery.
				Subscribe: &server.SubjectPermission{Allow: []string{"snakepit.v1.stats.>", "$SRV.>"}},
				Publish:   &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
			}},
			{Nkey: callerPub, Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{"snakepit.v1.stats.>", "$SRV.>"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
			}},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		log.Fatal("nats server did not start")
	}

	// The serving side: a pool, exposed as the micro service
	// "snakepit-stats". Run as many of these as you like, anywhere that
	// reaches NATS: calls spread over them.
	dir, cleanup, err := adapters.Dir()
	if err != nil {
		log.Fatal(err)
	}
	defer cleanup()
	servingConn := connect(ns.ClientURL(), servingKey, servingPub)
	defer servingConn.Close()
	p, err := pool.New(ctx, pool.Config{Name: "stats", Module: "example_adapter", Paths: []string{dir}, Size: 2})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close(ctx)
	srv, err := remote.Serve(ctx, servingConn, p, remote.ServeOptions{Description: "statistics in Python"})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown(ctx)

	// The calling side, typically another program on another machine.
	callerConn := connect(ns.ClientURL(), callerKey, callerPub)
	defer callerConn.Close()
	rp, err := remote.New(callerConn, "stats", remote.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer rp.Close(ctx)
	var out struct {
		Mean  float64 `json:"mean"`
		Stdev float64 `json:"stdev"`
	}
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rp.Call(callCtx, "stats", map[string]any{"values": []float64{1, 2, 3, 4}}, &out); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("over NATS: mean=%.2f stdev=%.3f (served by instance %s)\n", out.Mean, out.Stdev, srv.Instance())
}

// newUser makes an nkey user: its key pair and public key.
func newUser() (nkeys.KeyPair, string) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		log.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		log.Fatal(err)
	}
	return kp, pub
}

// connect connects as the nkey user: the server sends a nonce, the
// client signs it with the user's private key.
func connect(url string, kp nkeys.KeyPair, pub string) *nats.Conn {
	nc, err := nats.Connect(url, nats.Nkey(pub, kp.Sign))
	if err != nil {
		log.Fatal(err)
	}
	return nc
}
