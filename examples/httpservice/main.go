// Command httpservice serves a Python computation over HTTP and exposes the
// pool's metrics for Prometheus.
//
//	go run ./examples/httpservice -addr 127.0.0.1:8080
//	curl '127.0.0.1:8080/stats?v=1&v=2&v=4'
//	curl 127.0.0.1:8080/metrics
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/snakepit-go/snakepit/examples/internal/adapters"
	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/pool/poolprom"
	_ "github.com/snakepit-go/snakepit/python/dist"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))

	dir, cleanup, err := adapters.Dir()
	if err != nil {
		log.Fatal(err)
	}
	defer cleanup()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	p, err := pool.New(ctx, pool.Config{Name: "stats", Module: "example_adapter", Paths: []string{dir}, Logger: logger, CallTimeout: 2 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(poolprom.NewCollector(p))

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		var values []float64
		for _, s := range r.URL.Query()["v"] {
			f, err := strconv.ParseFloat(s, 64)
			if err != nil {
				http.Error(w, "bad value "+s, http.StatusBadRequest)
				return
			}
			values = append(values, f)
		}
		var out map[string]any
		err := p.Call(r.Context(), "stats", map[string]any{"values": values}, &out)
		switch {
		case errors.Is(err, pool.ErrSaturated):
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	})
	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
		p.Close(shutdown)
	}()
	logger.Info("listening", "addr", *addr)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	<-stopped // the pool is closed: workers stopped, teardown() run
}
