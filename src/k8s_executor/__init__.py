"""A Kubernetes executor for Apache Airflow."""
