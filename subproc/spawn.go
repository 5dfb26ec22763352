package subproc

import (
	"os/exec"
	"runtime"
	"sync"
	"time"

	"github.com/snakepit-go/snakepit/internal/pin"
)

// The spawner is one goroutine locked to its OS thread for the life of the
// process. Children are started from it because Linux delivers
// Pdeathsig when the thread that forked the child exits, not the process
// (golang/go#27505): from any other goroutine's thread a child could be
// killed when Go retires that thread.
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

func startOnSpawner(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked
			pin.Pinned()
			tick := time.NewTicker(time.Second)
			for {
				select {
				case r := <-spawnReqs:
					r.errc <- r.cmd.Start()
				case <-tick.C:
					pin.Sweep()
				}
			}
		}()
	})
	errc := make(chan error, 1)
	spawnReqs <- spawnReq{cmd, errc}
	return <-errc
}
