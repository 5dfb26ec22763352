package remote_test

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestLibraryLeavesServerOut: the package's non-test files do not import
// the NATS server (only tests, examples and the benchmark embed one), so
// programs that call or serve pools do not link it.
func TestLibraryLeavesServerOut(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(p, "github.com/nats-io/nats-server") {
				t.Errorf("%s imports %s, want no NATS server in the library", f, p)
			}
		}
	}
}
