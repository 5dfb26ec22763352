// Package callslot is the one-call-at-a-time slot both worker kinds use.
package callslot

import "context"

// Slot is held while a worker runs a call (or has a stream open).
type Slot chan struct{}

// New returns a free slot.
func New() Slot { return make(Slot, 1) }

// Acquire takes the slot, waiting until ctx ends or done closes. When done
// is closed it returns stopped(): the worker is gone.
func (s Slot) Acquire(ctx context.Context, done <-chan struct{}, stopped func() error) error {
	select {
	case <-done:
		return stopped()
	default:
	}
	select {
	case s <- struct{}{}: // the common case: free
		return nil
	default:
	}
	select {
	case s <- struct{}{}:
		select {
		case <-done:
			<-s
			return stopped()
		default:
			return nil
		}
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-done:
		return stopped()
	}
}

// Release frees the slot.
func (s Slot) Release() { <-s }
