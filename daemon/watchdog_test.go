package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/internal/freeport"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A run of the node that does not end is reported, with the stacks that
// show where it hangs.
func TestWatchdogReportsAStuckLoop(t *testing.T) {
	var logs syncBuffer
	cfg := Config{Dir: filepath.Join(t.TempDir(), "n0"), Listen: freeport.Addr(t), Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.runs.stallAfter = 100 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	qctx, qcancel := context.WithTimeout(ctx, 10*time.Second)
	defer qcancel()
	if err := d.Query(qctx, func(*core.Node) { time.Sleep(500 * time.Millisecond) }); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "the node's loop is stuck") || !strings.Contains(out, "TestWatchdogReportsAStuckLoop") {
		t.Fatalf("no stall report with the stuck goroutine's stack in the log:\n%s", out)
	}
	if n := strings.Count(out, "the node's loop is stuck"); n != 1 {
		t.Fatalf("the stall was reported %d times, want once", n)
	}
}
