package pool

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPoolKnowsWorkersOnlyThroughProfiles: the pool's non-test files import
// the profile packages and nothing below them (embed, locate).
func TestPoolKnowsWorkersOnlyThroughProfiles(t *testing.T) {
	files, err := filepath.Glob("*.go")
	require.NoError(t, err)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		require.NoError(t, err)
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			for _, below := range []string{"github.com/snakepit-go/snakepit/embed", "github.com/snakepit-go/snakepit/python/locate"} {
				assert.NotEqual(t, below, p, "%s imports %s, want only the profile packages", f, p)
			}
		}
	}
}
