// Package pin lets a goroutine that locks its OS thread for good tell the
// embedded Python, if the program links it: the thread gives up the thread
// states it cached for sub-interpreters, which could otherwise keep them
// from closing (nothing else can run on a locked thread to delete them).
package pin

import "sync/atomic"

type hooks struct{ pinned, sweep func() }

var installed atomic.Pointer[hooks]

// SetHooks installs what Pinned and Sweep run (package embed installs them).
func SetHooks(pinned, sweep func()) { installed.Store(&hooks{pinned, sweep}) }

// Pinned is called by a goroutine right after runtime.LockOSThread when it
// will keep the thread for its whole life.
func Pinned() {
	if h := installed.Load(); h != nil {
		h.pinned()
	}
}

// Sweep is called now and then by such a goroutine: thread states it kept
// at Pinned (their interpreters were busy then) go once they close.
func Sweep() {
	if h := installed.Load(); h != nil {
		h.sweep()
	}
}
