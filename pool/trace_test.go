package pool_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/snakepit-go/snakepit/host"
	"github.com/snakepit-go/snakepit/pool"
)

const tracedAdapter = `
import snakepit

snakepit.configure(thread_safe=True)

@snakepit.command
def traced(ctx):
    ctx.log.warning("inside the handler")
    return {"traceparent": ctx.traceparent, "host": ctx.host.probe()}

@snakepit.command
async def traced_async(ctx):
    return {"traceparent": ctx.traceparent, "host": await ctx.host.acall("probe")}

@snakepit.command
def traced_stream(ctx):
    for _ in range(2):
        yield ctx.traceparent

@snakepit.command
def fails():
    raise ValueError("no good")
`

// attrs returns the attributes of the first record with message msg.
func (h *recordingHandler) attrs(msg string) map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recs {
		if r.Message != msg {
			continue
		}
		out := map[string]string{}
		r.Attrs(func(a slog.Attr) bool { out[a.Key] = a.Value.String(); return true })
		return out
	}
	return nil
}

func spanAttrs(s tracetest.SpanStub) map[attribute.Key]string {
	out := map[attribute.Key]string{}
	for _, kv := range s.Attributes {
		out[kv.Key] = kv.Value.Emit()
	}
	return out
}

func traceparentOf(sc trace.SpanContext) string {
	return fmt.Sprintf("00-%s-%s-%s", sc.TraceID(), sc.SpanID(), sc.TraceFlags())
}

// TestTracing: with a TracerProvider every call and stream gets a client
// span, a child of the caller's, with the pool's attributes; Python sees
// its traceparent as ctx.traceparent, host functions run with it in their
// ctx, and the call's Python log records carry its trace and span ids. In
// both profiles, with one slot and with several (the concurrent path), and
// with Auto (the span names the profile it chose).
func TestTracing(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "traced_adapter.py"), []byte(tracedAdapter), 0o644))
	for _, profile := range []pool.Profile{pool.Thread, pool.Process, pool.Auto} {
		want := profile.String()
		if profile == pool.Auto {
			want = pool.Thread.String() // the profile Auto chose for this adapter
		}
		for _, slots := range []int{1, 2} {
			if profile == pool.Auto && slots > 1 {
				continue
			}
			t.Run(fmt.Sprintf("%v/slots=%d", profile, slots), func(t *testing.T) {
				exp := tracetest.NewInMemoryExporter()
				tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
				defer tp.Shutdown(context.Background())
				sink := &recordingHandler{}
				probe := host.New("probe", func(ctx context.Context, _ struct{}) ([]string, error) {
					sc := trace.SpanContextFromContext(ctx)
					return []string{sc.TraceID().String(), sc.SpanID().String()}, nil
				})
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				p, err := pool.New(ctx, pool.Config{Name: "tp", Profile: profile, Module: "traced_adapter", Paths: []string{dir},
					Size: 1, WorkerConcurrency: slots, Host: []host.Func{probe}, TracerProvider: tp, Logger: slog.New(sink)})
				require.NoError(t, err)
				defer p.Close(context.Background())

				rootCtx, root := tp.Tracer("test").Start(ctx, "root")
				callCtx := pool.WithCorrelationID(rootCtx, "cid-traced")
				for _, command := range []string{"traced", "traced_async"} {
					exp.Reset()
					var got struct {
						Traceparent string   `py:"traceparent"`
						Host        []string `py:"host"`
					}
					require.NoError(t, p.Call(callCtx, command, nil, &got))
					spans := exp.GetSpans()
					require.Len(t, spans, 1, "spans of one call")
					s := spans[0]
					assert.Equal(t, "tp/"+command, s.Name)
					assert.Equal(t, trace.SpanKindClient, s.SpanKind)
					assert.Equal(t, root.SpanContext().SpanID(), s.Parent.SpanID(), "the call's span is a child of the caller's")
					assert.Equal(t, root.SpanContext().TraceID(), s.SpanContext.TraceID())
					a := spanAttrs(s)
					assert.Equal(t, "tp", a["snakepit.pool"])
					assert.Equal(t, command, a["snakepit.command"])
					assert.Equal(t, want, a["snakepit.profile"])
					assert.NotEmpty(t, a["snakepit.worker"])
					assert.Equal(t, "cid-traced", a["snakepit.correlation_id"])
					assert.Equal(t, "ok", a["snakepit.outcome"])
					require.NotEmpty(t, s.Events)
					assert.Equal(t, "snakepit.acquired", s.Events[0].Name)

					assert.Equal(t, traceparentOf(s.SpanContext), got.Traceparent, "ctx.traceparent")
					assert.Equal(t, []string{s.SpanContext.TraceID().String(), s.SpanContext.SpanID().String()}, got.Host,
						"the host function's ctx carries the call's span")
				}
				la := sink.attrs("inside the handler")
				require.NotNil(t, la, "the handler's log record")
				assert.Equal(t, root.SpanContext().TraceID().String(), la["trace_id"])
				assert.Equal(t, "cid-traced", la["correlation_id"])
				assert.NotEmpty(t, la["span_id"])

				// A stream: one span for the whole stream.
				exp.Reset()
				var chunks []string
				for c, err := range p.Stream(rootCtx, "traced_stream", nil) {
					require.NoError(t, err)
					var s string
					require.NoError(t, c.Decode(&s))
					chunks = append(chunks, s)
				}
				spans := exp.GetSpans()
				require.Len(t, spans, 1, "spans of one stream")
				assert.Equal(t, "true", spanAttrs(spans[0])["snakepit.stream"])
				assert.Equal(t, []string{traceparentOf(spans[0].SpanContext), traceparentOf(spans[0].SpanContext)}, chunks)

				// An error: the span says so.
				exp.Reset()
				require.Error(t, p.Call(rootCtx, "fails", nil, nil))
				spans = exp.GetSpans()
				require.Len(t, spans, 1)
				assert.Equal(t, "python_error", spanAttrs(spans[0])["snakepit.outcome"])
				assert.Equal(t, codes.Error, spans[0].Status.Code)
				root.End()
			})
		}
	}
}

// TestTraceparentWithoutTracer: a pool with no TracerProvider makes no
// spans, but passes the caller's span on to Python; a call with no span
// has ctx.traceparent None.
func TestTraceparentWithoutTracer(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "traced_adapter.py"), []byte(tracedAdapter), 0o644))
	probe := host.New("probe", func(ctx context.Context, _ struct{}) ([]string, error) { return nil, nil })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := pool.New(ctx, pool.Config{Profile: pool.Process, Module: "traced_adapter", Paths: []string{dir}, Size: 1, Host: []host.Func{probe}})
	require.NoError(t, err)
	defer p.Close(context.Background())

	var got struct {
		Traceparent *string `py:"traceparent"`
	}
	require.NoError(t, p.Call(ctx, "traced", nil, &got))
	assert.Nil(t, got.Traceparent, "ctx.traceparent of an untraced call")

	tp := sdktrace.NewTracerProvider()
	defer tp.Shutdown(context.Background())
	rootCtx, root := tp.Tracer("test").Start(ctx, "root")
	defer root.End()
	require.NoError(t, p.Call(rootCtx, "traced", nil, &got))
	require.NotNil(t, got.Traceparent)
	assert.Equal(t, traceparentOf(root.SpanContext()), *got.Traceparent)
}
