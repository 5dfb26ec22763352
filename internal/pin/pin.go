// Package pin lets a goroutine that locks its OS thread for good tell the
// embedded Python, if the program links it: the thread gives up the thread
// states it cached for sub-interpreters, which could otherwise keep them
// from closing (nothing can run on a locked thread to delete them).
package pin

import "sync/atomic"

var hook atomic.Pointer[func()]

// SetHook installs what Pinned runs (package embed installs it).
func SetHook(f func()) { hook.Store(&f) }

// Pinned is called by a goroutine right after runtime.LockOSThread when it
// will keep the thread for its whole life.
func Pinned() {
	if f := hook.Load(); f != nil {
		(*f)()
	}
}
