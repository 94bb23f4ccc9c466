package daemon

import (
	"context"
	"testing"
	"time"
)

// A client that reconnects at once finds the VDI still held by its old
// connection, which is detaching: the new one waits for it instead of
// failing with "attached by another client of this node".
func TestClaimWaitsForTheClientBefore(t *testing.T) {
	tests := []struct {
		name      string
		releaseIn time.Duration // <0: never released
		wait      time.Duration // the new client's patience
		want      bool
	}{
		{"released at once", 0, time.Second, true},
		{"released while the new client waits", 50 * time.Millisecond, 10 * time.Second, true},
		{"held for good", -1, 100 * time.Millisecond, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Daemon{}
			release, ok := d.claim("vm")
			if !ok {
				t.Fatal("first claim refused")
			}
			if _, ok := d.claim("vm"); ok {
				t.Fatal("a second claim of a held VDI succeeded at once")
			}
			if tt.releaseIn >= 0 {
				time.AfterFunc(tt.releaseIn, release)
			}
			ctx, cancel := context.WithTimeout(context.Background(), tt.wait)
			defer cancel()
			again, ok := d.claimWait(ctx, "vm")
			if ok != tt.want {
				t.Fatalf("claimWait = %v, want %v", ok, tt.want)
			}
			if ok {
				again()
				if r, ok := d.claim("vm"); !ok {
					t.Fatal("the VDI stayed held after its second client let go")
				} else {
					r()
				}
			}
		})
	}
}
