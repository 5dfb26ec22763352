// Command streaming iterates over a Python generator from Go: each item is
// produced when the loop asks for it, and breaking out closes the generator.
//
//	go run ./examples/streaming
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
	p, err := pool.New(ctx, pool.Config{Profile: pool.Process, Module: "example_adapter", Paths: []string{dir}, Size: 1})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close(ctx)

	for chunk, err := range p.Stream(ctx, "fibonacci", map[string]any{"n": 1000}) {
		if err != nil {
			log.Fatal(err)
		}
		var n int64
		if err := chunk.Decode(&n); err != nil {
			log.Fatal(err)
		}
		if n > 100 {
			break // closes the generator in the worker
		}
		fmt.Print(n, " ")
	}
	fmt.Println()
}
