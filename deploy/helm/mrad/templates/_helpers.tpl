{{/*
_helpers.tpl - names, labels and the settings every template of the mrad
chart shares.
*/}}

{{/* The objects' name: the release's, or release-chart when the release
name does not contain the chart's. */}}
{{- define "mrad.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mrad.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* What selects the release's pods. */}}
{{- define "mrad.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mrad.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mrad.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mrad.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The Secret with the API key: the one given, or the chart's. */}}
{{- define "mrad.apiKeySecret" -}}
{{- .Values.apiKey.existingSecret | default (printf "%s-api-key" (include "mrad.fullname" .)) -}}
{{- end -}}

{{/* Where the Secret is mounted. */}}
{{- define "mrad.apiKeyDir" -}}
/etc/mrad/secret
{{- end -}}

{{/* mrad's environment: what follows from other values, then
.Values.config, then the defaults that .Values.config may change. */}}
{{- define "mrad.env" -}}
{{- $fixed := dict
      "MRAD_HOST" "0.0.0.0"
      "MRAD_PORT" (toString .Values.ports.http)
      "MRAD_ADMIN_PORT" (toString .Values.ports.admin)
      "MRAD_DRAIN_TIMEOUT_MS" (toString .Values.shutdown.drainTimeoutMs) -}}
{{- if .Values.apiKey.enabled -}}
{{- $_ := set $fixed "MRAD_API_KEY_FILE" (printf "%s/%s" (include "mrad.apiKeyDir" .) .Values.apiKey.secretKey) -}}
{{- end -}}
{{- $defaults := dict
      "MRAD_BACKEND" (ternary "cuda" "cpu" (gt (int .Values.gpu.count) 0))
      "MRAD_DEVICES" "all" -}}
{{- $config := dict -}}
{{- range $k, $v := .Values.config -}}
{{- $_ := set $config $k (toString $v) -}}
{{- end -}}
{{- toYaml (merge $fixed $config $defaults) -}}
{{- end -}}

{{/* What selects the proxy's pods (apart from mrad's: the mrad Services
select on the name). */}}
{{- define "mrad.proxySelectorLabels" -}}
app.kubernetes.io/name: {{ include "mrad.name" . }}-proxy
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mrad.proxyLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mrad.proxySelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
