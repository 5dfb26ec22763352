package main

import "testing"

// TestSoakShort runs the soak for a few seconds: overload in both
// profiles and a crash storm; every call ends exactly once, nothing is
// left behind.
func TestSoakShort(t *testing.T) {
	r, err := soak(6e9)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + r.table())
	if r.failed() {
		t.Fatal("the soak found lost or duplicated calls, unexpected errors, orphans or an overfull queue")
	}
	for _, s := range r {
		if s.Completed == 0 || s.Rejected == 0 {
			t.Fatalf("%s: completed %d, rejected %d: want both (the load must exceed capacity)", s.Phase, s.Completed, s.Rejected)
		}
	}
	if storm := r[len(r)-1]; storm.WorkersKilled == 0 || storm.WorkersReplaced != storm.WorkersKilled {
		t.Fatalf("crash storm: killed %d, replaced %d", storm.WorkersKilled, storm.WorkersReplaced)
	}
}
