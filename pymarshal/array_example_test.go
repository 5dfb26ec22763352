package pymarshal_test

import (
	"fmt"

	"github.com/snakepit-go/snakepit/pymarshal"
)

// An Array crosses to Python as a numpy.ndarray (a memoryview without
// numpy); numpy arrays returned by handlers come back as an Array, which
// Unmarshal also stores into nested slices.
func ExampleNewArray() {
	features := []float32{0.5, 1, 1.5, 2, 2.5, 3}
	a, err := pymarshal.NewArray(features, 2, 3) // a view: features is not copied
	if err != nil {
		panic(err)
	}
	data, err := pymarshal.Marshal(map[string]any{"x": a})
	if err != nil {
		panic(err)
	}

	// What a handler's result decodes into.
	var args struct{ X [][]float32 }
	if err := pymarshal.Unmarshal(data, &args); err != nil {
		panic(err)
	}
	fmt.Println(a.DType, a.Shape, args.X)

	var back struct{ X pymarshal.Array }
	_ = pymarshal.Unmarshal(data, &back)
	flat, err := pymarshal.ArrayData[float32](back.X)
	fmt.Println(flat, err)
	// Output:
	// <f4 [2 3] [[0.5 1 1.5] [2 2.5 3]]
	// [0.5 1 1.5 2 2.5 3] <nil>
}
