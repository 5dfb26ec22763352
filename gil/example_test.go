package gil_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/snakepit-go/snakepit/gil"
	"github.com/snakepit-go/snakepit/pymarshal"
	"github.com/snakepit-go/snakepit/worker"
)

// Start a thread-profile worker on an adapter module and call a command.
func Example() {
	dir, _ := os.MkdirTemp("", "adapter")
	defer os.RemoveAll(dir)
	os.WriteFile(filepath.Join(dir, "greeter.py"), []byte(`
import snakepit

@snakepit.command
def greet(name, ctx):
    return {"greeting": "hello " + name, "correlation_id": ctx.correlation_id}
`), 0o644)

	ctx := context.Background()
	w, err := gil.Start(ctx, gil.Config{Module: "greeter", Paths: []string{dir}})
	if err != nil {
		panic(err)
	}
	defer w.Close(ctx)

	args, _ := pymarshal.Marshal(map[string]any{"name": "gopher"})
	resp, err := w.Call(ctx, &worker.Request{Command: "greet", Args: args, CorrelationID: "req-1"})
	if err != nil {
		panic(err)
	}
	var out struct {
		Greeting      string `json:"greeting"`
		CorrelationID string `json:"correlation_id"`
	}
	if err := pymarshal.Unmarshal(resp.Result, &out); err != nil {
		panic(err)
	}
	fmt.Println(out.Greeting, out.CorrelationID)
	// Output: hello gopher req-1
}
