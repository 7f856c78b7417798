{#- The PDF's first page. `config.extra.version` is set by tools/docs/hooks.py from api_pipeline.__version__. -#}
<div class="csc-cover">
  <p class="csc-cover-kicker">Documentation</p>
  <h1>{{ config.site_name }}</h1>
  <p class="csc-cover-lead">{{ config.site_description }}</p>
  <p class="csc-cover-version">Version {{ config.extra.version }}</p>
  <p class="csc-cover-note">
    For council data teams, IT and data protection officers.
    Commands, settings, exit codes and messages in this document are generated from the program itself.
  </p>
</div>
