// Package remote serves pools over NATS and calls them from other
// processes and machines, with the methods and errors of a local pool.
//
// A serving program exposes a *pool.Pool with Serve (or Run); a calling
// program makes a *Pool with New and calls it as it would the local
// pool. Both sides bring their own *nats.Conn, so every NATS connection
// option applies: credentials, nkeys, JWTs, TLS. Run several serving
// instances of one pool anywhere that reaches NATS: requests spread over
// them, and callers need to know none of them.
//
// # Subjects
//
// A pool named N (its Config.Name: letters, digits, '-' and '_') is the
// NATS micro service "snakepit-N", version [Version]. Each instance
// subscribes to
//
//	snakepit.v1.N.call          calls, in the queue group "snakepit"
//	snakepit.v1.N.stream        streams, in the queue group
//	snakepit.v1.N.ctl           cancels of calls not yet placed (all instances)
//	snakepit.v1.N.i.ID.call     calls of sessions bound to instance ID
//	snakepit.v1.N.i.ID.stream   streams of sessions bound to it
//	snakepit.v1.N.i.ID.end      ends a session's state there
//	snakepit.v1.N.i.ID.ctl      cancels, stream credit and stream stops
//	snakepit.v1.N.i.ID.stats    its pool's Stats, as JSON
//
// and answers $SRV.PING, $SRV.INFO and $SRV.STATS (the "stats"
// endpoint's data is its pool's Stats). Grant callers publish rights on
// snakepit.v1.N.> and $SRV.>, instances subscribe rights there, both
// their _INBOX.> (see the examples/remote program).
//
// # Calls
//
// A request carries the command, the marshalled arguments (attachments
// after them), and headers: the correlation id, the remaining deadline
// (the instance bounds the call by it), the session and its affinity,
// idempotence, the heartbeat interval the caller wants. The instance
// answers on the caller's inbox: heartbeats while the call runs longer
// than the interval, then the result or an error, whose kind rebuilds
// on the caller the error the local pool returned (errors.Is and
// errors.As find pool.ErrSaturated, worker.ErrWorkerDead,
// *worker.PythonError and the rest through *RemoteError).
//
// # Failures
//
//	what happens                           what the caller gets
//	no instance serves the pool            ErrNoResponders, at once
//	instance dies during a call            after Options.DeadAfter without a word:
//	                                       ErrInstanceGone, matching worker.ErrWorkerDead;
//	                                       an Idempotent call is made again elsewhere
//	worker dies on the instance            the local pool's error (ErrWorkerDead; an
//	                                       Idempotent call was retried there)
//	instance's pool is saturated           pool.ErrSaturated at once, after
//	                                       Options.SaturatedRetries more tries
//	caller's context ends                  its error at once; the instance is told
//	                                       and interrupts the handler
//	session's instance is gone             pool.ErrSessionLost for a strict session's
//	                                       next call (a Hint session moves on)
//	instance shuts down (Server.Shutdown)  calls in progress finish; new ones go to
//	                                       other instances
//	payload over nats.Conn.MaxPayload      ErrPayloadTooLarge (*PayloadError);
//	                                       payloads are not split
//
// # Streams
//
// The caller grants the instance Options.StreamWindow chunks and more
// as its loop consumes them; the instance pulls from the pool's stream
// only what it may send. Breaking out of the loop tells the instance,
// which closes the generator; an instance that dies ends the loop with
// ErrInstanceGone.
package remote
