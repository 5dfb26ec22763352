// Command hostfunc shows a Python handler calling back into Go: the
// handler asks the service for a user's purchases and for stock levels
// (ctx.host in Python), functions the pool registers with pool.Config.Host.
// The same adapter runs in both profiles.
//
//	go run ./examples/hostfunc
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/snakepit-go/snakepit/examples/internal/adapters"
	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pool"
	_ "github.com/snakepit-go/snakepit/python/dist" // the hermetic CPython 3.14
)

// Purchase is what the service knows about a past order.
type Purchase struct {
	SKU      string  `json:"sku"`
	Category string  `json:"category"`
	Rating   float64 `json:"rating"`
}

// The service's own data, standing for its database and cache.
var purchases = map[int][]Purchase{
	7: {{"tea-01", "tea", 4.5}, {"mug-02", "kitchen", 3.9}, {"tea-03", "tea", 4.8}, {"pot-04", "kitchen", 4.1}},
}

var stock = map[string]int{"tea-01": 12, "mug-02": 0, "tea-03": 4, "pot-04": 1}

var errNoUser = errors.New("no such user")

func hostFuncs() []host.Func {
	type purchasesArgs struct {
		UserID int `json:"user_id"`
	}
	type stockArgs struct {
		SKUs []string `json:"skus"`
	}
	return []host.Func{
		host.New("purchases", func(ctx context.Context, a purchasesArgs) ([]Purchase, error) {
			// ctx is the Python call's: its deadline and correlation id.
			p, ok := purchases[a.UserID]
			if !ok {
				return nil, host.WithPythonType(fmt.Errorf("%w %d", errNoUser, a.UserID), "KeyError")
			}
			log.Printf("purchases(%d) for call %s", a.UserID, pool.CorrelationID(ctx))
			return p, nil
		}),
		host.New("stock", func(ctx context.Context, a stockArgs) (map[string]int, error) {
			out := make(map[string]int, len(a.SKUs))
			for _, s := range a.SKUs {
				out[s] = stock[s]
			}
			return out, nil
		}),
	}
}

func main() {
	dir, cleanup, err := adapters.Dir()
	if err != nil {
		log.Fatal(err)
	}
	defer cleanup()
	for _, profile := range []pool.Profile{pool.Thread, pool.Process} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		p, err := pool.New(ctx, pool.Config{
			Profile: profile, Module: "hostfunc_adapter", Paths: []string{dir}, Size: 1,
			Host: hostFuncs(),
		})
		if err != nil {
			log.Fatal(err)
		}
		var out struct {
			UserID int      `json:"user_id"`
			SKUs   []string `json:"skus"`
			Host   []string `json:"host"`
		}
		err = p.Call(pool.WithCorrelationID(ctx, "req-42"), "recommend", map[string]any{"user_id": 7}, &out)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%-7s profile: user %d -> %v (host functions %v)\n", profile, out.UserID, out.SKUs, out.Host)
		err = p.Call(ctx, "recommend", map[string]any{"user_id": 8}, &out)
		fmt.Printf("%-7s profile: user 8 -> %v\n", profile, err)
		p.Close(context.Background())
		cancel()
	}
}
