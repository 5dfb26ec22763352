package embed_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/snakepit-go/snakepit/embed"
	_ "github.com/snakepit-go/snakepit/python/dist" // the hermetic CPython 3.14
	"github.com/snakepit-go/snakepit/worker"
)

// Load the hermetic Python, create a sub-interpreter, define a function in
// it and call it with Go values.
func Example() {
	rt, err := embed.Default()
	if err != nil {
		panic(err)
	}
	in, err := rt.NewInterpreter(embed.InterpreterConfig{})
	if err != nil {
		panic(err)
	}
	defer in.Close(context.Background())

	ctx := context.Background()
	err = in.Exec(ctx, `
def greet(name, excited=False):
    return {"greeting": "hello " + name + ("!" if excited else ""), "length": len(name)}
`)
	if err != nil {
		panic(err)
	}
	v, err := in.Call(ctx, "__main__", "greet", []any{"gopher"}, map[string]any{"excited": true})
	fmt.Println(v, err)

	_, err = in.Eval(ctx, "int('x')")
	var pe *worker.PythonError
	if errors.As(err, &pe) {
		fmt.Println(pe.Type+":", pe.Message)
	}
	// Output:
	// map[greeting:hello gopher! length:6] <nil>
	// ValueError: invalid literal for int() with base 10: 'x'
}

// A goroutine attaches to an interpreter to call it on its own OS thread,
// with no handoff to the interpreter's home thread: the fast path.
func ExampleInterpreter_Attach() {
	rt, err := embed.Default()
	if err != nil {
		panic(err)
	}
	in, err := rt.NewInterpreter(embed.InterpreterConfig{})
	if err != nil {
		panic(err)
	}
	defer in.Close(context.Background())
	if err := in.Exec(context.Background(), "def square(x):\n    return x * x\n"); err != nil {
		panic(err)
	}

	th, err := in.Attach() // locks this goroutine to its OS thread
	if err != nil {
		panic(err)
	}
	defer th.Close() // before in.Close: deferred calls run last-in first-out
	square, err := th.Func("__main__", "square")
	if err != nil {
		panic(err)
	}
	sum := int64(0)
	for i := range 4 {
		v, err := th.Call(square, []any{i}, nil)
		if err != nil {
			panic(err)
		}
		sum += v.(int64)
	}
	fmt.Println(sum)
	// Output: 14
}
