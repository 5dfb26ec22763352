// Command quickstart runs a Python function through both profiles: a
// sub-interpreter in this process (thread) and a child process (process).
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/snakepit-go/snakepit/examples/internal/adapters"
	"github.com/snakepit-go/snakepit/pool"
	_ "github.com/snakepit-go/snakepit/python/dist" // the hermetic CPython 3.14
)

func main() {
	dir, cleanup, err := adapters.Dir()
	if err != nil {
		log.Fatal(err)
	}
	defer cleanup()
	ctx := context.Background()
	for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
		p, err := pool.New(ctx, pool.Config{Profile: profile, Module: "example_adapter", Paths: []string{dir}, Size: 2})
		if err != nil {
			log.Fatal(err)
		}
		var out struct {
			Mean   float64 `json:"mean"`
			Stdev  float64 `json:"stdev"`
			Python string  `json:"python"`
			PID    int     `json:"pid"`
		}
		err = p.Call(ctx, "stats", map[string]any{"values": []float64{1, 2, 3, 4}}, &out)
		p.Close(ctx)
		if err != nil {
			log.Fatal(err)
		}
		where := "in this process"
		if out.PID != os.Getpid() {
			where = fmt.Sprintf("in child process %d", out.PID)
		}
		fmt.Printf("%-7s profile: mean=%.2f stdev=%.3f computed by Python %s %s\n", profile, out.Mean, out.Stdev, out.Python, where)
	}
}
