package collector

import (
	"strings"
	"testing"
)

func TestAppValues(t *testing.T) {
	_, mr, c := newTestBreakers(t, `
app_values:
  - {name: digits, key: a}
  - {name: pickled_float, key: b}
  - {name: pickled_bool, key: c}
  - {name: absent_default, key: d, default: 0}
  - {name: absent, key: e}
  - {name: garbage, key: f}
  - {name: pickled_str, key: g}
  - {name: negative, key: h}
  - {name: oversized, key: i}
`)
	mr.Set("a", "2")
	mr.Set("b", "\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00G?\xf8\x00\x00\x00\x00\x00\x00.") // 1.5
	mr.Set("c", "\x80\x04\x88.")                                                             // True
	mr.Set("f", "zz")
	mr.Set("g", "\x80\x04\x8c\x013\x94.") // "3": a str, not a number
	mr.Set("h", "-7")
	mr.Set("i", strings.Repeat("1", maxValueBytes+1))
	compare(t, c, `celery_app_value{name="absent_default"} 0
celery_app_value{name="digits"} 2
celery_app_value{name="negative"} -7
celery_app_value{name="pickled_bool"} 1
celery_app_value{name="pickled_float"} 1.5
celery_exporter_app_values_oversize_total{} 1
`)
	if c.err != nil {
		t.Error(c.err)
	}
}

func TestParseAppValue(t *testing.T) {
	for _, tc := range []struct {
		name, raw string
		want      float64
		err       bool
	}{
		{"django-redis int digits", "2", 2, false},
		{"decimal with spaces (redis-cli)", " 3.5\n", 3.5, false},
		{"negative", "-7", -7, false},
		{"pickled float", "\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00G?\xf8\x00\x00\x00\x00\x00\x00.", 1.5, false},
		{"pickled True", "\x80\x04\x88.", 1, false},
		{"pickled str is no number", "\x80\x04\x8c\x013\x94.", 0, true},
		{"garbage", "zz", 0, true},
		{"empty", "", 0, true},
		{"over the size limit", strings.Repeat("1", maxValueBytes+1), 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseAppValue([]byte(tc.raw))
			if (err != nil) != tc.err {
				t.Fatalf("parseAppValue error = %v, want error %v", err, tc.err)
			}
			if got != tc.want {
				t.Errorf("parseAppValue = %v, want %v", got, tc.want)
			}
		})
	}
}
