// Package callslot is the call slots both worker kinds use: one call at a
// time, or a few.
package callslot

import "context"

// Slot is held while a worker runs a call (or has a stream open). A Slot
// made by NewN is n slots: Acquire takes one of them.
type Slot chan struct{}

// New returns a free slot.
func New() Slot { return make(Slot, 1) }

// NewN returns n free slots (n ≥ 1).
func NewN(n int) Slot { return make(Slot, n) }

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

// Release frees the slot (one of them).
func (s Slot) Release() { <-s }
