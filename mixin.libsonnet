// celery_exporter's monitoring mixin, for jsonnet users (kube-prometheus, grafana-operator, ...):
//
//   jb install github.com/celery-exporter/celery_exporter@main
//   local celery = (import 'celery_exporter/mixin.libsonnet') + {
//     _config+:: {
//       selector: 'job="celery", namespace="shop"',
//       alerts+:: { CeleryTaskSlow: { severity: 'critical', 'for': '20m' }, CeleryWorkerHighMemory: { enabled: false } },
//     },
//   };
//   { 'celery.rules.json': { groups: celery.prometheusRules.groups + celery.prometheusAlerts.groups } }
//
// Nothing here is a second copy of the bundle: the rules and dashboards are the files `make rules`
// renders from rules/config.yaml (rules/celery.rules.yml, dashboards/*.json), read as they are.
// With the default _config the output is exactly those files (TestMixinMatchesRenderedFiles).
// Thresholds, expected workers and queues, app alerts: edit a copy of rules/config.yaml and render
// it (`go run ./rules/render -config my.yaml -out my-dir`); _config covers what needs no render.
local renderedRules = std.parseYaml(importstr 'rules/celery.rules.yml');
local dashboardFiles = {
  'celery-app-signals.json': importstr 'dashboards/celery-app-signals.json',
  'celery-success-criteria.json': importstr 'dashboards/celery-success-criteria.json',
  'celery-tasks.json': importstr 'dashboards/celery-tasks.json',
  'celery-workers-queues.json': importstr 'dashboards/celery-workers-queues.json',
};

{
  _config+:: {
    // The label matchers (no braces) of rules/config.yaml's selector, which the files were
    // rendered with; selector replaces it in every rule.
    renderedSelector:: 'job="celery"',
    selector: self.renderedSelector,
    // Per alert: { severity: 'warning' | 'critical' | ..., 'for': '<duration>', enabled: false,
    // labels: { team: 'x' } }.
    alerts: {},
    // Labels added to every alert.
    alertLabels: {},
    // Tags added to every dashboard.
    dashboardTags: [],
  },

  local config = self._config,
  local withSelector(expr) = std.strReplace(expr, config.renderedSelector, config.selector),
  local alertOverride(name) = if std.objectHas(config.alerts, name) then config.alerts[name] else {},
  local groupsOf(kind) = [
    g { rules: [r for r in g.rules if std.objectHas(r, kind)] }
    for g in renderedRules.groups
    if std.length([r for r in g.rules if std.objectHas(r, kind)]) > 0
  ],
  local enabled(r) = std.get(alertOverride(r.alert), 'enabled', true),

  prometheusRules+:: {
    groups+: [
      g { rules: [r { expr: withSelector(r.expr) } for r in g.rules] }
      for g in groupsOf('record')
    ],
  },

  prometheusAlerts+:: {
    groups+: [
      g {
        rules: [
          local o = alertOverride(r.alert);
          r {
            expr: withSelector(r.expr),
            [if std.objectHas(o, 'for') then 'for']: o['for'],
            labels+: config.alertLabels + std.get(o, 'labels', {}) +
                     (if std.objectHas(o, 'severity') then { severity: o.severity } else {}),
          }
          for r in g.rules
          if enabled(r)
        ],
      }
      for g in groupsOf('alert')
    ],
  },

  grafanaDashboards+:: {
    [file]: std.parseJson(dashboardFiles[file]) + (
      if std.length(config.dashboardTags) > 0 then { tags+: config.dashboardTags } else {}
    )
    for file in std.objectFields(dashboardFiles)
  },
}
