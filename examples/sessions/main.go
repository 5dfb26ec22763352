// Command sessions keeps per-user state in Python across calls: each
// session sticks to the worker that holds its state.
//
//	go run ./examples/sessions
package main

import (
	"context"
	"fmt"
	"log"

	"github.com/snakepit-go/snakepit/examples/internal/adapters"
	"github.com/snakepit-go/snakepit/pool"
	_ "github.com/snakepit-go/snakepit/python/dist"
)

func main() {
	dir, cleanup, err := adapters.Dir()
	if err != nil {
		log.Fatal(err)
	}
	defer cleanup()
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{Module: "example_adapter", Paths: []string{dir}, Size: 2})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close(ctx)

	alice := p.Session("alice", pool.StrictQueue)
	bob := p.Session("bob", pool.StrictQueue)
	for _, step := range []struct {
		s    *pool.Session
		item string
	}{{alice, "apples"}, {bob, "bread"}, {alice, "pears"}, {bob, "butter"}, {alice, "plums"}} {
		var basket []string
		if err := step.s.Call(ctx, "add_item", map[string]any{"item": step.item}, &basket); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%-5s basket: %v\n", step.s.ID(), basket)
	}
	alice.Close(ctx) // drops alice's state on her worker
}
