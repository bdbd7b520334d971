// celery_exporter's monitoring mixin, for jsonnet users (kube-prometheus, grafana-operator, ...):
//
//   jb install github.com/celery-exporter/celery_exporter@main
//   local celery = (import 'celery_exporter/mixin.libsonnet') + {
//     _config+:: {
//       selector: 'job="celery"',
//       aggregationLabels: ['namespace', 'job'],
//       ignoreTasks: ['refresh_exchange_rates'],
//       ignoreQueues: ['reports'],
//       alerts+:: { CeleryTaskSlow: { severity: 'critical', 'for': '20m' }, CeleryWorkerHighMemory: { enabled: false } },
//     },
//   };
//   { 'celery.rules.json': { groups: celery.prometheusRules.groups + celery.prometheusAlerts.groups } }
//
// Nothing here is a second copy of the bundle: the rules and dashboards are the files `make rules`
// renders from rules/config.yaml (rules/celery.rules.yml, dashboards/*.json), read as they are.
// With the default _config the output is exactly those files (TestMixinMatchesRenderedFiles); each
// _config field below gives exactly what a render with the same setting gives
// (TestMixinMatchesRender).
//
// Without a render (this _config): the selector, ignore lists for tasks and queues,
// aggregation labels of the rules and alerts, each alert's severity, `for`, labels and enabled,
// labels of every alert, dashboard tags.
// Needs a render of your own copy of rules/config.yaml: thresholds, expected workers and queues,
// windows, app alerts (breakers, log events, task failures, app values), and the dashboards'
// namespace/cluster variables (aggregationLabels here changes the rules, not the dashboards).
// Render it without a checkout and point the mixin at the render:
//   go run github.com/celery-exporter/celery_exporter/rules/render@latest -config my.yaml -out my-render
//   _config+:: {
//     renderedSelector: '<my.yaml selector>',
//     rulesYAML: importstr 'my-render/rules/celery.rules.yml',
//     dashboardsJSON: { [f]: importstr ('my-render/dashboards/' + f) ... }  // one importstr per file
//   }
// The ignore lists and aggregationLabels here then apply on top of it: leave them at their
// defaults when the render already has them.
{
  _config+:: {
    // The render this mixin reads.
    rulesYAML:: importstr 'rules/celery.rules.yml',
    dashboardsJSON:: {
      'celery-app-signals.json': importstr 'dashboards/celery-app-signals.json',
      'celery-success-criteria.json': importstr 'dashboards/celery-success-criteria.json',
      'celery-tasks.json': importstr 'dashboards/celery-tasks.json',
      'celery-workers-queues.json': importstr 'dashboards/celery-workers-queues.json',
    },
    // The label matchers (no braces) of the selector the render was made with; selector
    // replaces it in every rule.
    renderedSelector:: 'job="celery"',
    selector: self.renderedSelector,
    // Labels every recording rule and alert keeps apart, as rules/config.yaml's
    // aggregation_labels: ['namespace', 'job'] in Kubernetes (two apps in two namespaces with the
    // same job stay apart), ['cluster', 'namespace', 'job'] across clusters. Must hold job.
    aggregationLabels: ['job'],
    // Tasks (short names; any dotted module prefix matches) and queues the task and queue alerts
    // leave out, as rules/config.yaml's tasks.ignore and queues.ignore.
    ignoreTasks: [],
    ignoreQueues: [],
    // Per alert: { severity: 'warning' | 'critical' | ..., 'for': '<duration>', enabled: false,
    // labels: { team: 'x' } }.
    alerts: {},
    // Labels added to every alert.
    alertLabels: {},
    // Tags added to every dashboard.
    dashboardTags: [],
  },

  local config = self._config,
  local renderedRules = std.parseYaml(config.rulesYAML),
  local withSelector(expr) = std.strReplace(expr, config.renderedSelector, config.selector),

  // Go's regexp.QuoteMeta and strconv.Quote (for the ASCII names of tasks and queues), so the
  // matchers are the render's byte for byte.
  local quoteMeta(s) = std.join('', [
    if std.length(std.findSubstr(c, '\\.+*?()|[]{}^$')) > 0 then '\\' + c else c
    for c in std.stringChars(s)
  ]),
  local alternatives(names) = std.join('|', [quoteMeta(n) for n in names]),
  local notTasks = 'name!~' + std.escapeStringJson('(.+[.])?(' + alternatives(config.ignoreTasks) + ')'),
  local notQueues =
    if std.length(config.ignoreQueues) == 1 then 'queue_name!=' + std.escapeStringJson(config.ignoreQueues[0])
    else 'queue_name!~' + std.escapeStringJson(alternatives(config.ignoreQueues)),

  // A matcher added to a recorded series wherever it appears: `r` gets {m}, `r{…}` gets {m, …}.
  local onRecorded(expr, r, m) =
    local held = std.strReplace(expr, r + '{', '\u0000');
    std.strReplace(std.strReplace(held, r, r + '{' + m + '}'), '\u0000', r + '{' + m + ', '),
  // A matcher added after the selector of raw series of metric.
  local onRaw(expr, metric, m) = std.strReplace(expr, metric + '{' + config.selector, metric + '{' + config.selector + ',' + m),

  local ignoring(group, expr) =
    if group == 'celery.tasks' && std.length(config.ignoreTasks) > 0 then
      std.foldl(function(e, r) onRecorded(e, r, notTasks), ['celery:task_failure:ratio', 'celery:task_runtime_seconds:p95'],
                std.foldl(function(e, m) onRaw(e, m, notTasks), ['celery_task_failed_total', 'celery_task_rejected_total', 'celery_task_running_oldest_age_seconds'], expr))
    else if group == 'celery.queues' && std.length(config.ignoreQueues) > 0 then
      std.foldl(function(e, r) onRecorded(e, r, notQueues), ['celery:queue_length:max', 'celery:queue_consumers:max'], expr)
    else expr,

  local labels = config.aggregationLabels,
  assert std.member(labels, 'job') : 'aggregationLabels must hold job, got %s' % [labels],
  local tenants = labels != ['job'],
  // Every grouping of the rules starts with job (rules/bundle aggregate()).
  local aggregated(expr) =
    if !tenants then expr
    else std.strReplace(std.strReplace(expr, 'by (job', 'by (' + std.join(', ', labels)), 'on (job', 'on (' + std.join(', ', labels)),
  local dashboardURL(url) =
    if !tenants then url
    else std.strReplace(url, '?var-job={{ $labels.job | urlquery }}',
                        '?' + std.join('&', ['var-%s={{ $labels.%s | urlquery }}' % [l, l] for l in labels])),
  // CeleryWorkersBelowExpected's description lists the app's queues without consumer.
  local description(text) =
    if !tenants then text
    else std.strReplace(text, '{job=%q} == 0" $labels.job',
                        '{' + std.join(',', ['%s=%%q' % l for l in labels]) + '} == 0" ' + std.join(' ', ['$labels.' + l for l in labels])),

  local alertOverride(name) = if std.objectHas(config.alerts, name) then config.alerts[name] else {},
  local groupsOf(kind) = [
    g { rules: [r for r in g.rules if std.objectHas(r, kind)] }
    for g in renderedRules.groups
    if std.length([r for r in g.rules if std.objectHas(r, kind)]) > 0
  ],
  local enabled(r) = std.get(alertOverride(r.alert), 'enabled', true),

  prometheusRules+:: {
    groups+: [
      g { rules: [r { expr: aggregated(withSelector(r.expr)) } for r in g.rules] }
      for g in groupsOf('record')
    ],
  },

  prometheusAlerts+:: {
    groups+: [
      g {
        rules: [
          local o = alertOverride(r.alert);
          r {
            expr: aggregated(ignoring(g.name, withSelector(r.expr))),
            [if std.objectHas(o, 'for') then 'for']: o['for'],
            labels+: config.alertLabels + std.get(o, 'labels', {}) +
                     (if std.objectHas(o, 'severity') then { severity: o.severity } else {}),
            annotations+: {
              description: description(super.description),
              dashboard_url: dashboardURL(super.dashboard_url),
            },
          }
          for r in g.rules
          if enabled(r)
        ],
      }
      for g in groupsOf('alert')
    ],
  },

  grafanaDashboards+:: {
    [file]: std.parseJson(config.dashboardsJSON[file]) + (
      if std.length(config.dashboardTags) > 0 then { tags+: config.dashboardTags } else {}
    )
    for file in std.objectFields(config.dashboardsJSON)
  },
}
