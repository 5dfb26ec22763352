package embed

// LiveCallBufs reports how many pooled call buffers hold C memory.
func LiveCallBufs() int64 { return liveCallBufs.Load() }
