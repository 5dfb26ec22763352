package pool

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPoolKnowsWorkersOnlyThroughProfiles: the pool's non-test files import
// the profile packages and nothing below them (embed, locate).
func TestPoolKnowsWorkersOnlyThroughProfiles(t *testing.T) {
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
			for _, below := range []string{"github.com/snakepit-go/snakepit/embed", "github.com/snakepit-go/snakepit/python/locate"} {
				if p == below {
					t.Errorf("%s imports %s, want only the profile packages", f, p)
				}
			}
		}
	}
}
