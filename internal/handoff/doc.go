// Package handoff is what a broker reader (Redis pub/sub, an AMQP consumer) shares with the event
// decoder: a FIFO bounded in messages and in bytes, so the reader never waits for the decoder and
// a slow decoder costs a bounded amount of memory, and the record of the reader's gaps (times it
// lost the broker), in time and in position in the stream, so what was lost meanwhile can be told.
package handoff
