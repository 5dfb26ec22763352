package pool_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/snakepit-go/snakepit/pool"
)

func writeAdapter(src string) string {
	dir, _ := os.MkdirTemp("", "adapter")
	os.WriteFile(filepath.Join(dir, "shop.py"), []byte(src), 0o644)
	return dir
}

// A pool of thread-profile workers running an adapter module.
func Example() {
	dir := writeAdapter(`
import snakepit

@snakepit.command
def total(prices, tax=0.2):
    return round(sum(prices) * (1 + tax), 2)
`)
	defer os.RemoveAll(dir)
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{Module: "shop", Paths: []string{dir}, Size: 2})
	if err != nil {
		panic(err)
	}
	defer p.Close(ctx)

	var total float64
	if err := p.Call(ctx, "total", map[string]any{"prices": []float64{10, 5.5}}, &total); err != nil {
		panic(err)
	}
	fmt.Println(total)
	// Output: 18.6
}

// Sessions keep Python-side state on one worker between calls.
func ExamplePool_Session() {
	dir := writeAdapter(`
import snakepit

@snakepit.command
def add(item, ctx):
    ctx.session.setdefault("cart", []).append(item)
    return ctx.session["cart"]
`)
	defer os.RemoveAll(dir)
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{Profile: pool.Process, Module: "shop", Paths: []string{dir}, Size: 2})
	if err != nil {
		panic(err)
	}
	defer p.Close(ctx)

	s := p.Session("customer-42", pool.StrictQueue)
	defer s.Close(ctx)
	var cart []string
	for _, item := range []string{"tea", "milk"} {
		if err := s.Call(ctx, "add", map[string]any{"item": item}, &cart); err != nil {
			panic(err)
		}
	}
	fmt.Println(cart)
	// Output: [tea milk]
}

// Stream iterates over a generator handler.
func ExamplePool_Stream() {
	dir := writeAdapter(`
import snakepit

@snakepit.command
def countdown(n):
    while n > 0:
        yield n
        n -= 1
`)
	defer os.RemoveAll(dir)
	ctx := context.Background()
	p, err := pool.New(ctx, pool.Config{Module: "shop", Paths: []string{dir}, Size: 1})
	if err != nil {
		panic(err)
	}
	defer p.Close(ctx)

	for chunk, err := range p.Stream(ctx, "countdown", map[string]any{"n": 3}) {
		if err != nil {
			panic(err)
		}
		var n int
		chunk.Decode(&n)
		fmt.Print(n, " ")
	}
	fmt.Println("liftoff")
	// Output: 3 2 1 liftoff
}
