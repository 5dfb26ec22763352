package remote

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/worker"
)

// Version is the protocol version: it names the subjects
// (snakepit.v1.<pool>.…) and is the micro service's version.
const Version = "1.0.0"

// subjectRoot prefixes every subject of the protocol.
const subjectRoot = "snakepit.v1."

// DefaultQueueGroup is the queue group instances of a pool share.
const DefaultQueueGroup = "snakepit"

// Headers of a request and of the messages that answer it. Their names
// are in canonical MIME form so that they read the same however a client
// library spells them.
const (
	hCorrelation = "Sp-Cid"      // correlation id
	hCommand     = "Sp-Cmd"      // command
	hTimeout     = "Sp-Timeout"  // remaining deadline, in nanoseconds
	hSession     = "Sp-Session"  // session id
	hAffinity    = "Sp-Affinity" // pool.Affinity, as an integer
	hIdempotent  = "Sp-Idem"     // "1": pool.Idempotent
	hAttachments = "Sp-Att"      // lengths of the attachments after the arguments, comma separated
	hHeartbeat   = "Sp-Hb"       // heartbeat interval the caller asks for, in nanoseconds
	hCredit      = "Sp-Credit"   // a stream's initial window; in a credit message, the chunks granted
	hCall        = "Sp-Call"     // in a control message: the call it is about (the call's reply subject)
	hControl     = "Sp-Ctl"      // a control message's kind: ctlCancel, ctlCredit, ctlStop
	hKind        = "Sp-Kind"     // an answer's kind: kindHeartbeat, kindResult, ...
	hInstance    = "Sp-Inst"     // the answering instance's id
	hStatus      = "Status"      // set by the NATS server: "503" is no responders
)

// Kinds of answer.
const (
	kindHeartbeat = "hb"    // the call runs (or waits for a worker) on the instance
	kindResult    = "res"   // the result (the body); the call's last message
	kindError     = "err"   // an error (the body, JSON wireError); the last message
	kindChunk     = "chunk" // a stream item (the body)
	kindEnd       = "end"   // the stream ended; the last message
)

// Kinds of control message.
const (
	ctlCancel = "cancel" // the caller's context ended: interrupt the call
	ctlCredit = "credit" // the caller grants more stream chunks
	ctlStop   = "stop"   // the caller stopped iterating: close the stream
)

// Subject tokens of a pool's endpoints.
const (
	epCall    = "call"
	epStream  = "stream"
	epEnd     = "end" // ends a session's state (instance subject only)
	epControl = "ctl"
	epStats   = "stats"
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// ErrBadName: a pool name that cannot be a subject token (letters, digits,
// '-' and '_' only).
var ErrBadName = errors.New("remote: pool name must be letters, digits, '-' or '_'")

func checkName(name string) error {
	if !nameRE.MatchString(name) {
		return errors.Join(ErrBadName, errors.New("remote: pool name "+strconv.Quote(name)))
	}
	return nil
}

// ServiceName is the micro service name of the pool called name.
func ServiceName(name string) string { return "snakepit-" + name }

// subject returns the queue-group subject of the pool's endpoint ep.
func subject(pool, ep string) string { return subjectRoot + pool + "." + ep }

// instanceSubject returns the subject of endpoint ep of one instance.
func instanceSubject(pool, inst, ep string) string {
	return subjectRoot + pool + ".i." + inst + "." + ep
}

// wireError is an error as it crosses the wire: its kind names the
// sentinel or typed error the caller gets back, the rest its details.
type wireError struct {
	Kind      string   `json:"kind"`
	Message   string   `json:"msg"`
	Type      string   `json:"type,omitempty"`      // python: exception type
	PyMessage string   `json:"message,omitempty"`   // python: str(exception)
	Traceback string   `json:"traceback,omitempty"` // python
	Command   string   `json:"command,omitempty"`   // not_found, bad_args
	Available []string `json:"available,omitempty"` // not_found
	Reason    string   `json:"reason,omitempty"`    // bad_args, dead
	Worker    string   `json:"worker,omitempty"`    // dead
	What      string   `json:"what,omitempty"`      // not_serializable
	Detail    string   `json:"detail,omitempty"`    // not_serializable
}

// encodeError turns an error of the local pool into its wire form.
func encodeError(err error) []byte {
	w := wireError{Kind: "error", Message: err.Error()}
	var (
		pe *worker.PythonError
		de *worker.DeadError
		nf *worker.CommandNotFoundError
		ba *worker.BadArgumentsError
		ns *worker.NotSerializableError
	)
	switch {
	case errors.As(err, &pe):
		w.Kind, w.Type, w.PyMessage, w.Traceback = "python", pe.Type, pe.Message, pe.Traceback
	case errors.Is(err, worker.ErrWorkerDead):
		w.Kind = "dead"
		if errors.As(err, &de) {
			w.Worker, w.Reason = de.WorkerID, de.Reason
		}
	case errors.Is(err, pool.ErrSaturated):
		w.Kind = "saturated"
	case errors.Is(err, pool.ErrSessionLost):
		w.Kind = "session_lost"
	case errors.Is(err, pool.ErrSessionBusy):
		w.Kind = "session_busy"
	case errors.Is(err, pool.ErrDegraded):
		w.Kind = "degraded"
	case errors.Is(err, pool.ErrClosed), errors.Is(err, worker.ErrClosed):
		w.Kind = "closed"
	case errors.Is(err, errLeaving):
		w.Kind = "leaving"
	case errors.Is(err, context.DeadlineExceeded):
		w.Kind = "deadline"
	case errors.Is(err, context.Canceled):
		w.Kind = "canceled"
	case errors.As(err, &nf):
		w.Kind, w.Command, w.Available = "not_found", nf.Command, nf.Available
	case errors.As(err, &ba):
		w.Kind, w.Command, w.Reason = "bad_args", ba.Command, ba.Reason
	case errors.Is(err, worker.ErrStreamMismatch):
		w.Kind = "stream_mismatch"
	case errors.As(err, &ns):
		w.Kind, w.What, w.Detail = "not_serializable", ns.What, ns.Detail
	case errors.Is(err, ErrPayloadTooLarge):
		w.Kind = "payload"
	case errors.Is(err, worker.ErrSetup):
		w.Kind = "setup"
	case errors.Is(err, worker.ErrNotStarted):
		w.Kind = "not_started"
	case errors.Is(err, ErrProtocol):
		w.Kind = "protocol"
	}
	b, _ := json.Marshal(w) // only strings: cannot fail
	return b
}

// decodeError rebuilds an error an instance sent: a *RemoteError that
// unwraps to the error callers branch on.
func decodeError(inst string, body []byte) error {
	var w wireError
	if err := json.Unmarshal(body, &w); err != nil {
		return &RemoteError{Instance: inst, Message: "undecodable error: " + err.Error(), Err: ErrProtocol}
	}
	var cause error
	switch w.Kind {
	case "python":
		cause = &worker.PythonError{Type: w.Type, Message: w.PyMessage, Traceback: w.Traceback}
	case "dead":
		cause = &worker.DeadError{WorkerID: w.Worker, Reason: w.Reason}
	case "saturated":
		cause = pool.ErrSaturated
	case "session_lost":
		cause = pool.ErrSessionLost
	case "session_busy":
		cause = pool.ErrSessionBusy
	case "degraded":
		cause = pool.ErrDegraded
	case "closed":
		cause = pool.ErrClosed
	case "leaving":
		cause = errLeaving
	case "deadline":
		cause = context.DeadlineExceeded
	case "canceled":
		cause = context.Canceled
	case "not_found":
		cause = &worker.CommandNotFoundError{Command: w.Command, Available: w.Available}
	case "bad_args":
		cause = &worker.BadArgumentsError{Command: w.Command, Reason: w.Reason}
	case "stream_mismatch":
		cause = worker.ErrStreamMismatch
	case "not_serializable":
		cause = &worker.NotSerializableError{What: w.What, Detail: w.Detail}
	case "payload":
		cause = ErrPayloadTooLarge
	case "setup":
		cause = worker.ErrSetup
	case "not_started":
		cause = worker.ErrNotStarted
	case "protocol":
		cause = ErrProtocol
	}
	return &RemoteError{Instance: inst, Message: w.Message, Err: cause}
}

// header returns the first value of key, read as sent.
func header(h nats.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// splitAttachments splits a request body into the arguments and the
// attachments whose lengths spec lists.
func splitAttachments(body []byte, spec string) (args []byte, att [][]byte, err error) {
	if spec == "" {
		return body, nil, nil
	}
	parts := strings.Split(spec, ",")
	total := 0
	lens := make([]int, len(parts))
	for i, s := range parts {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, nil, errors.New("remote: bad attachment lengths " + strconv.Quote(spec))
		}
		lens[i] = n
		total += n
	}
	if total > len(body) {
		return nil, nil, errors.New("remote: attachments longer than the body")
	}
	args = body[:len(body)-total]
	rest := body[len(args):]
	for _, n := range lens {
		att = append(att, rest[:n:n])
		rest = rest[n:]
	}
	return args, att, nil
}

// headerSize estimates what h adds to a message.
func headerSize(h nats.Header) int {
	n := len("NATS/1.0\r\n\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}
