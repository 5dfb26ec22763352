// Command tracing shows a pool traced with OpenTelemetry: each call gets a
// span (a child of the caller's), Python sees it as ctx.traceparent, the
// handler's log records carry its trace id, and a host function the
// handler calls runs inside the same trace. Spans are printed as JSON on
// stdout (the SDK's stdout exporter; a service would export to its
// collector instead).
//
//	go run ./examples/tracing
package main

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"time"

	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/snakepit-go/snakepit/examples/internal/adapters"
	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pool"
	_ "github.com/snakepit-go/snakepit/python/dist" // the hermetic CPython 3.14
)

func main() {
	dir, cleanup, err := adapters.Dir()
	if err != nil {
		log.Fatal(err)
	}
	defer cleanup()

	exp, err := stdouttrace.New(stdouttrace.WithPrettyPrint())
	if err != nil {
		log.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())

	price := host.New("price", func(ctx context.Context, a struct {
		SKU string `json:"sku"`
	}) (float64, error) {
		// ctx carries the pool call's span: Go work here joins the trace.
		sc := trace.SpanContextFromContext(ctx)
		log.Printf("price(%s) in trace %s", a.SKU, sc.TraceID())
		return 2.5, nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := pool.New(ctx, pool.Config{
		Name: "quotes", Module: "tracing_adapter", Paths: []string{dir}, Size: 1,
		Host:           []host.Func{price},
		TracerProvider: tp,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close(context.Background())

	// The request's own span, as an HTTP handler's middleware would start.
	ctx, span := tp.Tracer("example").Start(ctx, "POST /quote")
	var out struct {
		Total       float64 `json:"total"`
		Traceparent string  `json:"traceparent"`
	}
	err = p.Call(ctx, "quote", map[string]any{"sku": "tea-01", "qty": 4}, &out)
	span.End()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "total %.2f; Python ran under traceparent %s\n", out.Total, out.Traceparent)
}
