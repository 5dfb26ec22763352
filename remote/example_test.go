package remote_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/remote"
)

// A pool served over NATS and called from elsewhere. Here both sides and
// the NATS server share one process; in production each serving
// instance, each caller and the NATS cluster run where they like.
func Example() {
	ctx := context.Background()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		Users: []*server.User{{Username: "app", Password: "example-only"}}})
	if err != nil {
		log.Fatal(err)
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		log.Fatal("nats server did not start")
	}

	// Serving side.
	servingConn, err := nats.Connect(ns.ClientURL(), nats.UserInfo("app", "example-only"))
	if err != nil {
		log.Fatal(err)
	}
	defer servingConn.Close()
	p, err := pool.New(ctx, pool.Config{Name: "py", Profile: pool.Process, Module: "remote_adapter", Paths: []string{"testdata"}, Size: 1})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close(ctx)
	srv, err := remote.Serve(ctx, servingConn, p, remote.ServeOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Shutdown(ctx)

	// Calling side.
	callerConn, err := nats.Connect(ns.ClientURL(), nats.UserInfo("app", "example-only"))
	if err != nil {
		log.Fatal(err)
	}
	defer callerConn.Close()
	rp, err := remote.New(callerConn, "py", remote.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer rp.Close(ctx)
	var out struct {
		Value string `json:"value"`
		CID   string `json:"cid"`
	}
	err = rp.Call(pool.WithCorrelationID(ctx, "req-1"), "echo", map[string]any{"value": "hello"}, &out, remote.Idempotent())
	fmt.Println(out.Value, out.CID, err)
	// Output: hello req-1 <nil>
}
