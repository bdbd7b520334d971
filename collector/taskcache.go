package collector

import "github.com/celery-exporter/celery_exporter/internal/tasks"

// account measures t again after its names or held events changed, and settles the tasks the
// cache evicted to stay within its byte budget as a count eviction is settled: their held events
// are applied with a fallback queue and they stop counting as running.
func (s *EventSource) account(t *tasks.Task) {
	for _, e := range s.cache.Account(t) {
		s.release(e)
		s.stopRunning(e.UUID)
	}
}
