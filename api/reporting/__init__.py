"""Reporting over job history: reports, rollups, history generation and retention, their SQL."""
