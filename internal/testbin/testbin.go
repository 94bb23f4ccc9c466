// Package testbin builds the sheepdog binary once per test process, for
// tests that run it as real processes.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	once sync.Once
	path string
	err  error
)

// Sheepdog returns the path of a sheepdog binary built from pkg (the
// cmd/sheepdog directory, relative to the calling test's package), building
// it on the first call.
func Sheepdog(t testing.TB, pkg string) string {
	t.Helper()
	once.Do(func() {
		dir, e := os.MkdirTemp("", "sheepdog-test-bin")
		if e != nil {
			err = e
			return
		}
		path = filepath.Join(dir, "sheepdog")
		if out, e := exec.Command("go", "build", "-o", path, pkg).CombinedOutput(); e != nil {
			err = fmt.Errorf("go build: %w\n%s", e, out)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return path
}
