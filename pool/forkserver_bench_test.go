package pool_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/procfs"

	"github.com/snakepit-go/snakepit/pool"
	"github.com/snakepit-go/snakepit/subproc"
)

// forkBenchAdapter imports what a typical adapter's dependencies pull in
// (an HTTP client, JSON, decimal, XML, asyncio), all fork-safe.
const forkBenchAdapter = `
import asyncio
import decimal
import email.parser
import http.client
import json
import os
import time
import xml.etree.ElementTree

import snakepit


@snakepit.command
def pid(wait=0.0):
    time.sleep(wait)
    return os.getpid()


@snakepit.command
def noop():
    return None
`

func forkBenchDir(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "forkbench_adapter.py"), []byte(forkBenchAdapter), 0o644); err != nil {
		b.Fatal(err)
	}
	return dir
}

func forkBenchConfig(dir string, forked bool) pool.Config {
	cfg := pool.Config{Profile: pool.Process, Module: "forkbench_adapter", Paths: []string{dir}, Size: 2}
	if forked {
		cfg.ForkServer = &pool.ForkServerOptions{ImportAdapter: true}
	}
	return cfg
}

var forkModes = []struct {
	name   string
	forked bool
}{{"fresh", false}, {"forked", true}}

// BenchmarkForkServerReady: the time for a process pool of 2 (and 8)
// workers to be ready (New returns), each worker a fresh interpreter or
// forked by the pool's fork server, whose own start — one interpreter
// start and the adapter's imports — is included, or forked by a fork
// server the program started before (shared). Close is not timed.
func BenchmarkForkServerReady(b *testing.B) {
	dir := forkBenchDir(b)
	ctx := context.Background()
	for _, size := range []int{2, 8} {
		for _, m := range forkModes {
			b.Run(fmt.Sprintf("workers=%d/%s", size, m.name), func(b *testing.B) {
				cfg := forkBenchConfig(dir, m.forked)
				cfg.Size = size
				for b.Loop() {
					p, err := pool.New(ctx, cfg)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					p.Close(ctx)
					b.StartTimer()
				}
			})
		}
		// A fork server the program started once and shares between
		// pools (ForkServerOptions.Server): its start is not timed.
		b.Run(fmt.Sprintf("workers=%d/shared", size), func(b *testing.B) {
			fs, err := subproc.StartForkServer(ctx, subproc.ForkServerConfig{Module: "forkbench_adapter", ImportAdapter: true, Paths: []string{dir}})
			if err != nil {
				b.Fatal(err)
			}
			defer fs.Close(ctx)
			cfg := forkBenchConfig(dir, false)
			cfg.Size = size
			cfg.ForkServer = &pool.ForkServerOptions{Server: fs}
			for b.Loop() {
				p, err := pool.New(ctx, cfg)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				p.Close(ctx)
				b.StartTimer()
			}
		})
	}
}

// BenchmarkForkServerRecycle: the time to recycle the worker of a
// 1-worker pool (MaxCalls 1): a call, then the replacement's start — a
// fresh interpreter or a fork — until it is in service.
func BenchmarkForkServerRecycle(b *testing.B) {
	dir := forkBenchDir(b)
	ctx := context.Background()
	for _, m := range forkModes {
		b.Run(m.name, func(b *testing.B) {
			cfg := forkBenchConfig(dir, m.forked)
			cfg.Size = 1
			cfg.MaxCalls = 1
			p, err := pool.New(ctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close(ctx)
			for b.Loop() {
				before := p.Stats().Recycled
				if err := p.Call(ctx, "noop", nil, nil); err != nil {
					b.Fatal(err)
				}
				for p.Stats().Recycled == before {
					time.Sleep(100 * time.Microsecond)
				}
			}
		})
	}
}

// BenchmarkForkServerMemory reports each worker's unique (USS: private
// clean + private dirty) and proportional (PSS) memory, from
// /proc/PID/smaps_rollup, in a 2-worker pool of fresh or forked workers
// after one call each. The time per op is meaningless.
func BenchmarkForkServerMemory(b *testing.B) {
	dir := forkBenchDir(b)
	ctx := context.Background()
	for _, m := range forkModes {
		b.Run(m.name, func(b *testing.B) {
			var uss, pss float64
			n := 0
			for b.Loop() {
				p, err := pool.New(ctx, forkBenchConfig(dir, m.forked))
				if err != nil {
					b.Fatal(err)
				}
				pids := make([]int, 2)
				var wg sync.WaitGroup
				for i := range pids {
					wg.Go(func() {
						// Both calls overlap: each lands on its own worker.
						if err := p.Call(ctx, "pid", map[string]any{"wait": 0.2}, &pids[i]); err != nil {
							b.Error(err)
						}
					})
				}
				wg.Wait()
				if pids[0] == pids[1] {
					b.Fatalf("both calls ran on worker %d", pids[0])
				}
				time.Sleep(50 * time.Millisecond) // let the workers settle after their reply
				for _, pid := range pids {
					proc, err := procfs.NewProc(pid)
					if err != nil {
						b.Fatal(err)
					}
					r, err := proc.ProcSMapsRollup()
					if err != nil {
						b.Fatal(err)
					}
					uss += float64(r.PrivateClean + r.PrivateDirty)
					pss += float64(r.Pss)
					n++
				}
				p.Close(ctx)
			}
			b.ReportMetric(uss/float64(n)/(1<<20), "USS-MiB/worker")
			b.ReportMetric(pss/float64(n)/(1<<20), "PSS-MiB/worker")
		})
	}
}
