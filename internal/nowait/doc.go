// Package nowait writes to a socket without waiting for it: one write(2)
// or writev(2) of whatever the socket takes at the moment. Event-driven
// code uses it to send from the goroutine that produced the data, where a
// hand-off to a writer goroutine would cost a thread wake-up, and leaves
// what was not taken to that writer.
package nowait
