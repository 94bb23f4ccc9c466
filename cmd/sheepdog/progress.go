package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// isTerminal reports whether w is a terminal: progress goes there, and
// nowhere else (a pipe, a file or /dev/null stays quiet).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && f != nil && isTTY(f)
}

// progress shows a transfer on a terminal: bytes done, rate and, when
// the total is known, percentage and ETA, redrawn in place a few times a
// second. A nil *progress does nothing, so callers need not check.
type progress struct {
	w     io.Writer
	verb  string // "writing vm0", "reading vm0@base"
	total int64  // 0: unknown
	start time.Time
	done  atomic.Int64
	quit  chan struct{}
	wg    sync.WaitGroup
	width int // of the last line drawn, to blank it out
}

// progressInterval is how often the line is redrawn.
const progressInterval = 250 * time.Millisecond

// startProgress starts showing a transfer on w if w is a terminal;
// otherwise it returns nil.
func startProgress(w io.Writer, verb string, total int64) *progress {
	if !isTerminal(w) {
		return nil
	}
	p := &progress{w: w, verb: verb, total: total, start: time.Now(), quit: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(progressInterval)
		defer t.Stop()
		for {
			select {
			case <-p.quit:
				return
			case <-t.C:
				p.draw(progressLine(p.verb, p.done.Load(), p.total, time.Since(p.start)), "")
			}
		}
	}()
	return p
}

// add counts n more bytes done.
func (p *progress) add(n int64) {
	if p != nil {
		p.done.Add(n)
	}
}

// finish stops redrawing and leaves a last line: the totals, with note
// appended, or where the transfer stopped when err is not nil.
func (p *progress) finish(note string, err error) {
	if p == nil {
		return
	}
	close(p.quit)
	p.wg.Wait()
	el := time.Since(p.start)
	done := p.done.Load()
	line := fmt.Sprintf("%s: %s in %s (%s/s)", p.verb, fmtBytes(done), fmtDuration(el), fmtBytes(int64(rate(done, el))))
	if err != nil {
		line = fmt.Sprintf("%s: stopped after %s", p.verb, fmtBytes(done))
	} else if note != "" {
		line += ", " + note
	}
	p.draw(line, "\n")
}

func (p *progress) draw(line, end string) {
	pad := ""
	if n := p.width - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	p.width = len(line)
	fmt.Fprintf(p.w, "\r%s%s%s", line, pad, end)
}

func rate(done int64, el time.Duration) float64 {
	if el <= 0 {
		return 0
	}
	return float64(done) / el.Seconds()
}

// progressLine is one progress report: "writing vm0: 120.0 MiB of 256.0
// MiB (46%), 48.2 MiB/s, ETA 0:03" (without a known total: bytes and
// rate only).
func progressLine(verb string, done, total int64, el time.Duration) string {
	r := rate(done, el)
	if total <= 0 {
		return fmt.Sprintf("%s: %s, %s/s", verb, fmtBytes(done), fmtBytes(int64(r)))
	}
	pct := 100 * float64(done) / float64(total)
	eta := "--:--"
	if r > 0 && done <= total {
		eta = fmtDuration(time.Duration(float64(total-done) / r * float64(time.Second)))
	}
	return fmt.Sprintf("%s: %s of %s (%.0f%%), %s/s, ETA %s", verb, fmtBytes(done), fmtBytes(total), pct, fmtBytes(int64(r)), eta)
}

// fmtBytes prints a byte count in binary units: 512 B, 3.5 KiB, 120.0 MiB.
func fmtBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB"}
	i := -1
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// fmtDuration prints m:ss, or h:mm:ss from an hour on.
func fmtDuration(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}
