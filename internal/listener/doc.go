// Package listener reads Celery's event stream from Redis pub/sub and hands the raw payloads on.
// It does nothing else: Redis disconnects a pub/sub client whose output buffer grows past its
// limit (32 MB hard by default), so the reader must never wait for the code that turns events into
// metrics. When the hand-off buffer is full (in payloads or in bytes) a payload is dropped and
// counted instead.
package listener
