// Package pidboxtest is a fake Celery worker's remote-control side, for unit tests against
// miniredis: it receives pidbox requests the way kombu's pidbox Node does (PSUBSCRIBE to the
// request channel, destination filtering) and replies the way it does (look the reply binding up,
// LPUSH to the bound list, only if the binding exists).
package pidboxtest
