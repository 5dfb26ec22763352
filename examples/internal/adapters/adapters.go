// Package adapters holds the Python adapters the examples run, written to a
// temporary directory so the examples work from any directory.
package adapters

import (
	"embed"
	"os"
	"path/filepath"
)

//go:embed *.py
var files embed.FS

// Dir writes the adapters to a new temporary directory and returns it with
// a function that removes it.
func Dir() (string, func(), error) {
	dir, err := os.MkdirTemp("", "snakepit-examples-")
	if err != nil {
		return "", nil, err
	}
	entries, _ := files.ReadDir(".")
	for _, e := range entries {
		b, _ := files.ReadFile(e.Name())
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			os.RemoveAll(dir)
			return "", nil, err
		}
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}
