package daemon

import (
	"strings"
	"testing"
	"time"
)

// TestTickBounds: a tick outside [MinTick, MaxTick] is refused before the
// directory is touched; zero means DefaultTick.
func TestTickBounds(t *testing.T) {
	tests := []struct {
		tick    time.Duration
		want    time.Duration
		wantErr bool
	}{
		{0, DefaultTick, false},
		{MinTick, MinTick, false},
		{MaxTick, MaxTick, false},
		{MinTick - 1, 0, true},
		{MaxTick + 1, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.tick.String(), func(t *testing.T) {
			d, err := New(Config{Dir: t.TempDir(), Listen: "127.0.0.1:7000", Tick: tt.tick})
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "tick") {
					t.Fatalf("New with tick %v: err = %v; want a tick error", tt.tick, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer d.store.Close()
			if d.cfg.Tick != tt.want {
				t.Fatalf("tick = %v; want %v", d.cfg.Tick, tt.want)
			}
		})
	}
}
