package pool

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/snakepit-go/snakepit/worker"
)

// tracerName names the pool's tracer (its instrumentation scope).
const tracerName = "github.com/snakepit-go/snakepit/pool"

// The span attributes of a pool call (Config.TracerProvider).
const (
	attrPool          = attribute.Key("snakepit.pool")
	attrCommand       = attribute.Key("snakepit.command")
	attrProfile       = attribute.Key("snakepit.profile")
	attrWorker        = attribute.Key("snakepit.worker")
	attrCorrelationID = attribute.Key("snakepit.correlation_id")
	attrSession       = attribute.Key("snakepit.session")
	attrOutcome       = attribute.Key("snakepit.outcome")
	attrStream        = attribute.Key("snakepit.stream")
	attrWait          = attribute.Key("snakepit.wait_us")
)

// startSpan starts the span of a call or stream of command when the pool
// traces (nil span otherwise); ctx carries it for the worker, the host
// functions and the logs.
func (p *Pool) startSpan(ctx context.Context, command, session string, stream bool) (context.Context, trace.Span) {
	if p.tracer == nil {
		return ctx, nil
	}
	attrs := []attribute.KeyValue{
		attrPool.String(p.cfg.Name),
		attrCommand.String(command),
	}
	if session != "" {
		attrs = append(attrs, attrSession.String(session))
	}
	if stream {
		attrs = append(attrs, attrStream.Bool(true))
	}
	return p.tracer.Start(ctx, p.cfg.Name+"/"+command, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
}

// profileName is the profile the pool's workers run (with Auto, the one
// it chose), for spans.
func (p *Pool) profileName() string {
	switch {
	case p.cfg.NewWorker != nil:
		return "custom"
	case p.effective != nil:
		return p.effective().String()
	}
	return p.cfg.Profile.String()
}

// spanAcquired records on span (nil: none) that the call got worker m
// after waiting wait.
func (p *Pool) spanAcquired(span trace.Span, m *member, wait time.Duration) {
	if span == nil {
		return
	}
	span.AddEvent("snakepit.acquired", trace.WithAttributes(attrWorker.String(m.id), attrWait.Int64(wait.Microseconds())))
	span.SetAttributes(attrWorker.String(m.id), attrProfile.String(p.profileName()))
}

// spanAgain records on span (nil: none) that the call is made again, and why.
func spanAgain(span trace.Span, why string) {
	if span != nil {
		span.AddEvent("snakepit.again", trace.WithAttributes(attribute.String("reason", why)))
	}
}

// endSpan ends span (nil: none) with the call's outcome.
func endSpan(span trace.Span, cid string, err error) {
	if span == nil {
		return
	}
	span.SetAttributes(attrCorrelationID.String(cid), attrOutcome.String(outcome(err)))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// outcome names how a call ended, for its span.
func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline_exceeded"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, ErrSaturated):
		return "saturated"
	case errors.Is(err, worker.ErrWorkerDead):
		return "worker_dead"
	case errors.Is(err, ErrClosed), errors.Is(err, worker.ErrClosed):
		return "closed"
	}
	var pe *worker.PythonError
	if errors.As(err, &pe) {
		return "python_error"
	}
	return "error"
}

// traceParent returns the W3C traceparent of the span in ctx, "" for none.
func traceParent(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return ""
	}
	return "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sc.TraceFlags().String()
}
